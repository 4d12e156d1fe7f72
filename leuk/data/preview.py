"""``python -m leuk.data.preview``: look at what a data/preprocess/augmentation config does.

Rows are images (a few per class, from one split); columns are the original, the preprocessed
image, the lesion mask and the watershed overlay (only when the pipeline crops lesions), and
several draws of the training augmentation applied to the preprocessed image.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from matplotlib.figure import Figure
from omegaconf import DictConfig

import leuk  # noqa: F401  (config resolvers)
from leuk.config import config_dir
from leuk.config.schema import validate_train_config
from leuk.data.decode import open_rgb
from leuk.preprocess.lesion import LesionCrop, lesion_mask
from leuk.preprocess.segmentation import watershed_cells
from leuk.train import build_datamodule

log = logging.getLogger(__name__)


def _lesion_step(pipeline: Any) -> tuple[int, LesionCrop] | None:
    for i, step in enumerate(getattr(pipeline, "steps", [])):
        if isinstance(step, LesionCrop):
            return i, step
    return None


def preview(cfg: DictConfig) -> Path:
    validate_train_config(cfg, extra_top_level={"preview": dict})
    p = cfg.preview
    datamodule = build_datamodule(cfg)
    datamodule.setup()
    rng = np.random.default_rng(cfg.seed)
    rows: list[tuple[str, list[tuple[str, np.ndarray]]]] = []
    split_idx = datamodule.indices[p.split]
    lesion = _lesion_step(datamodule.preprocess)
    for c, name in enumerate(datamodule.class_names):
        members = split_idx[datamodule.labels[split_idx] == c]
        for i in rng.choice(members, size=min(p.per_class, len(members)), replace=False):
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
                for a in range(p.augmented):
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
    out = Path(cfg.paths.output_dir) / "preview.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    log.info("wrote %s", out)
    return out


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="preview")
def main(cfg: DictConfig) -> None:
    preview(cfg)


if __name__ == "__main__":
    main()
