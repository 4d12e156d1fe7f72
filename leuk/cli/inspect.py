"""``python -m leuk.cli.inspect data=<name> data.root=...``: what a data set holds, before training.

Per-class counts, image sizes, exact and near-duplicate groups and unreadable files
(``leuk.data.inspect``), printed and written to ``inspect.json`` in the run folder.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

import leuk  # noqa: F401  (config resolvers)
from leuk.cli.errors import user_errors
from leuk.config import config_dir
from leuk.data.inspect import inspect_data
from leuk.utils.report import write_json

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="inspect")
def main(cfg: DictConfig) -> None:
    with user_errors("leuk-inspect"):
        # The DataModule builds its source from data.root as in training; only the source is
        # scanned, so no seed, augmentation or preprocessing is needed.
        datamodule = instantiate(cfg.data)
        report = inspect_data(datamodule, cfg.get("show_groups", 10))
        out = write_json(Path(cfg.paths.output_dir) / "inspect.json", report)
    log.info("wrote %s", out)


if __name__ == "__main__":
    main()
