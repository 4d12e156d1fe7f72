"""A picture of what a data/preprocess/augmentation config does (``python -m leuk.cli.preview``).

Rows are images (a few per class, from one split); columns are the original, the preprocessed
image, the lesion mask and the watershed overlay (only when the pipeline crops lesions), and
several draws of the training augmentation applied to the preprocessed image.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from leuk.data.datamodule import LeukDataModule
from leuk.data.decode import open_rgb
from leuk.preprocess.lesion import LesionCrop, lesion_mask
from leuk.preprocess.segmentation import watershed_cells

log = logging.getLogger(__name__)


def _lesion_step(pipeline: Any) -> tuple[int, LesionCrop] | None:
    for i, step in enumerate(getattr(pipeline, "steps", [])):
        if isinstance(step, LesionCrop):
            return i, step
    return None


def preview(
    datamodule: LeukDataModule,
    out: Path,
    per_class: int = 3,
    augmented: int = 4,
    split: str = "train",
    seed: int = 0,
) -> Path:
    """Write the grid of ``per_class`` images of each class from ``split`` (drawn with ``seed``)
    to ``out`` (a PNG), with ``augmented`` draws of the training augmentation per image."""
    datamodule.setup()
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, list[tuple[str, np.ndarray]]]] = []
    split_idx = datamodule.indices[split]
    lesion = _lesion_step(datamodule.preprocess)
    for c, name in enumerate(datamodule.class_names):
        members = split_idx[datamodule.labels[split_idx] == c]
        for i in rng.choice(members, size=min(per_class, len(members)), replace=False):
            record = datamodule.records[int(i)]
            original = np.asarray(open_rgb(record.path))
            processed = np.asarray(datamodule.decoded.images[int(i)])
            panels = [("original", original), ("preprocessed", processed)]
            if lesion is not None:
                k, step = lesion
                before = original
                for prior in datamodule.preprocess.steps[:k]:
                    before = prior(before)
                mask = lesion_mask(before, step.settings)
                panels.append(("lesion mask", (mask[..., None] * np.array([255, 255, 255])).astype(np.uint8)))
                panels.append(("watershed", watershed_cells(before).overlay))
            if datamodule.train_transform is not None:
                for a in range(augmented):
                    panels.append(
                        (f"augmented {a + 1}", datamodule.train_transform(image=processed)["image"])
                    )
            rows.append((f"{name}\n{Path(record.path).name}", panels))
    n_cols = max(len(panels) for _, panels in rows)
    # The object-oriented Figure needs no GUI backend (headless machines, DDP ranks).
    fig = Figure(figsize=(2.2 * n_cols, 2.3 * len(rows)))
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    for r, (label, panels) in enumerate(rows):
        for col in range(n_cols):
            ax = axes[r][col]
            ax.axis("off")
            if col < len(panels):
                title, image = panels[col]
                ax.imshow(image)
                if r == 0:
                    ax.set_title(title, fontsize=8)
        axes[r][0].text(
            -0.05, 0.5, label, transform=axes[r][0].transAxes, ha="right", va="center", fontsize=7
        )
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    log.info("wrote %s", out)
    return out
