"""``python -m leuk.cli.preview data=... augmentation=... preprocess=...``: a PNG grid of what a
data/preprocess/augmentation config does to a few images per class (``leuk.data.preview``)."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

import leuk  # noqa: F401  (config resolvers)
from leuk.cli.errors import user_errors
from leuk.composition import build_datamodule
from leuk.config import config_dir
from leuk.config.schema import validate_preview_config
from leuk.data.preview import preview as write_preview


def preview(cfg: DictConfig) -> Path:
    """Check ``cfg`` (``preview.yaml``), build its DataModule as training does and write
    ``preview.png`` into the run folder."""
    validate_preview_config(cfg)
    p = cfg.preview
    return write_preview(
        build_datamodule(cfg),
        Path(cfg.paths.output_dir) / "preview.png",
        per_class=p.per_class,
        augmented=p.augmented,
        split=p.split,
        seed=cfg.seed,
    )


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="preview")
def main(cfg: DictConfig) -> None:
    with user_errors("leuk-preview"):
        preview(cfg)


if __name__ == "__main__":
    main()
