"""Helpers shared by the tests (composition as `python -m leuk.train` does it, tiny runs)."""

from __future__ import annotations

import copy
import functools
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from leuk.config import config_dir

REPO_ROOT = Path(__file__).resolve().parent.parent

# A synthetic data set small enough for a whole training run in seconds on 2 CPU cores.
TINY_SYNTHETIC = ["data.source.images_per_class=12", "data.source.size=64"]
TINY_LOADER = [
    "data.image_size=32",
    "data.batch_size=8",
    "data.num_workers=0",
    "data.persistent_workers=false",
    "trainer.enable_progress_bar=false",
]
TINY = TINY_SYNTHETIC + TINY_LOADER
# A paper experiment that fine-tunes ImageNet weights, run offline without them: from scratch,
# knowingly (the weights policy refuses frozen random weights otherwise).
OFFLINE_FROM_SCRATCH = ["model.pretrained=false", "model.allow_random_frozen=true"]
# The ALL data set's class folders (name prefix -> class name).
ALL_CLASSES = {"Benign": "Benign", "Early": "Early Pre-B", "Pre": "Pre-B", "Pro": "Pro-B"}


def data_dir() -> Path | None:
    """``LEUK_DATA_DIR`` (the shared real data), or ``../shared/data`` beside the repository."""
    env = os.environ.get("LEUK_DATA_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return None


@functools.cache
def _composed(config_name: str, overrides: tuple[str, ...]) -> DictConfig:
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name, overrides=list(overrides))


def compose_config(
    overrides: Sequence[str] = (), output_dir: str | Path | None = None, config_name: str = "train"
) -> DictConfig:
    """Compose a config as ``python -m leuk.train`` would, with the run folder set to ``output_dir``.

    The same overrides compose once per session (about 0.1 s each on 2 cores, and the suite asks
    for the same few hundred times); every caller gets a copy of its own to change."""
    GlobalHydra.instance().clear()
    cfg = copy.deepcopy(_composed(config_name, tuple(overrides)))
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


PYTHON = sys.executable


def fit_two_short_epochs(module: Any, datamodule: Any, *callbacks: Any) -> None:
    """Two epochs of two training batches and one validation batch, no logger or checkpoints,
    with ``callbacks`` (the run's own, and a probe watching): enough to see what changes between
    epochs."""
    trainer = L.Trainer(
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    )
    trainer.fit(module, datamodule=datamodule)


def smear(size: int = 64) -> np.ndarray:
    """A purple cell (radius 12) on a light pink background: what the cell mask finds, and keeps."""
    yy, xx = np.mgrid[:size, :size]
    image = np.empty((size, size, 3), np.uint8)
    image[:] = (235, 215, 225)
    image[(yy - size // 2) ** 2 + (xx - size // 2) ** 2 <= 12**2] = (120, 40, 160)
    return image
