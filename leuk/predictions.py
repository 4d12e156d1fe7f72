"""The one inference path of ``leuk.eval`` and ``leuk.predict``: a trained run's preprocessing, a
prediction Trainer, ``trainer.predict`` on a ``PredictionDataModule``, and the predictions table.

The checkpoint holds the model (``leuk.checkpoints.load_trained``); the run folder around it holds
the split (``split.csv``) and, for runs started from the command line, the composed config
(``.hydra/config.yaml``), whose ``preprocess`` steps new images go through as the training
images did.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from leuk.abstention import uncertain_mask
from leuk.data.decode import open_rgb
from leuk.data.prediction import PredictionDataModule
from leuk.data.sources import DataError
from leuk.metrics import mean_per_image

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ the run folder
def run_dir_of(ckpt_path: str | Path) -> Path:
    """``<run>/checkpoints/x.ckpt`` → ``<run>``; a checkpoint elsewhere → its own folder."""
    path = Path(ckpt_path).expanduser().resolve()
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def load_run_config(run_dir: Path) -> DictConfig | None:
    """The run's composed config, where Hydra saved it (runs started from the command line)."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return None
    cfg = OmegaConf.load(path)
    return cfg if isinstance(cfg, DictConfig) else None


def load_split(run_dir: Path) -> pd.DataFrame | None:
    """The run's ``split.csv``, original images only (balancing copies are not files of their own)."""
    path = run_dir / "split.csv"
    if not path.is_file():
        return None
    frame = pd.read_csv(path)
    if "variant" in frame:
        frame = frame[frame["variant"] == "original"]
    return frame.reset_index(drop=True)


def run_preprocess(run_cfg: DictConfig | None, saved_steps: Any = None) -> Any | None:
    """The run's preprocessing pipeline, unfitted; None when it had no steps.

    The run's Hydra config names the steps where there is one; else the steps the checkpoint
    saved (runs started in-process, or a checkpoint copied out of its run folder).
    """
    steps = OmegaConf.select(run_cfg, "preprocess.steps") if run_cfg is not None else None
    if steps is None:
        steps = saved_steps
    if not steps:
        return None
    try:
        from leuk.preprocess import build_preprocess
    except ImportError:
        log.warning("the run used preprocess steps, but leuk.preprocess is missing: images go in as is")
        return None
    pipeline = build_preprocess(steps)
    return None if pipeline.is_identity else pipeline


def check_run_images(paths: Sequence[str], run_dir: Path, purpose: str) -> None:
    """A ``DataError`` naming the run's ``data.root`` when images its ``split.csv`` lists are gone
    (the data set moved since training), instead of one unreadable-file line per image."""
    missing = [p for p in paths if not Path(p).exists()]
    if not missing:
        return
    run_cfg = load_run_config(run_dir)
    root = OmegaConf.select(run_cfg, "data.root") if run_cfg is not None else None
    where = f"the run's data.root ('{root}')" if root else "the data set the run trained on"
    raise DataError(
        f"{purpose} needs the images that {run_dir / 'split.csv'} lists, but {len(missing)} of "
        f"{len(paths)} are gone (e.g. '{missing[0]}'): {where} has moved or been removed; put the "
        "data set back at that path"
    )


def preprocess_for_run(run_dir: Path, split: pd.DataFrame | None, saved_steps: Any = None) -> Any | None:
    """``run_preprocess`` of the run's config (or the checkpoint's ``saved_steps``), fitted, where a
    step needs it, on the run's training images at full resolution (as the DataModule fits it): the
    same images give the same state."""
    pipeline = run_preprocess(load_run_config(run_dir), saved_steps)
    if pipeline is None or not pipeline.needs_fit:
        return pipeline
    if split is None:
        raise DataError(
            f"the run's preprocessing is fitted on its training images, but {run_dir} has no split.csv"
        )
    train_paths = split.loc[split["split"] == "train", "path"].tolist()
    check_run_images(train_paths, run_dir, "the run's preprocessing (fitted on its training images)")
    pipeline.fit(np.asarray(open_rgb(p)) for p in train_paths)
    return pipeline


def describe_preprocess(pipeline: Any | None) -> str:
    return "none" if pipeline is None else pipeline.cache_key()


# ------------------------------------------------------------------ trainer.predict
def resolve_device(name: str) -> torch.device:
    """``auto``: the GPU when there is one, else the CPU; or any torch device name."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def prediction_trainer(device: torch.device, progress_bar: bool = False) -> L.Trainer:
    """A Trainer that only predicts, on one device: no logger, no checkpoints, no summary."""
    if device.type == "cuda":
        accelerator, devices = "gpu", [device.index or 0]
    else:
        accelerator, devices = device.type, 1
    return L.Trainer(
        accelerator=accelerator,
        devices=devices,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
    )


def predict_probs(
    trainer: L.Trainer,
    module: L.LightningModule,
    datamodule: PredictionDataModule,
    per_sample: bool = False,
) -> np.ndarray:
    """Softmax probabilities (N×C) of ``module.predict_step`` on every readable image, in order.

    With per-lesion patches (``datamodule.owner``) an image's row is the mean of its patches'
    rows, the image-level rule of training's ``test_image/*``; ``per_sample``: one row per patch.
    """
    datamodule.setup()
    if not len(datamodule.images):
        return np.zeros((0, 0), np.float32)
    parts = trainer.predict(module, datamodule=datamodule)
    probs = torch.cat([p.float().cpu() for p in parts]).numpy()  # type: ignore[union-attr]
    if datamodule.owner is None or per_sample:
        return probs
    ids, means = mean_per_image(probs, datamodule.owner)
    if len(ids) != len(datamodule.labels):
        raise ValueError(f"{len(ids)} of {len(datamodule.labels)} images have a patch to predict")
    return means.astype(probs.dtype)


class PenultimateFeatures(L.LightningModule):
    """Predicts the network's features before its last layer (``forward_head(..., pre_logits=True)``),
    through the same network (normalization included) as the probabilities."""

    def __init__(self, net: torch.nn.Module, model_name: str = "") -> None:
        super().__init__()
        if not all(callable(getattr(net, f, None)) for f in ("forward_features", "forward_head")):
            raise TypeError(
                f"model '{model_name or type(net).__name__}' has no forward_features/forward_head, so its "
                "penultimate features cannot be read"
            )
        self.net = net

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True).float().flatten(1)


# ------------------------------------------------------------------ the table
def predictions_table(
    paths: Sequence[str],
    probs: np.ndarray,
    class_names: Sequence[str],
    threshold: float,
    true_labels: Sequence[int] | np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per image: path, its true class (where known), the predicted class, the confidence,
    whether it is flagged uncertain (below ``threshold``) and each class's probability."""
    probs = np.asarray(probs).reshape(len(paths), len(class_names))
    columns: dict[str, Any] = {"path": list(paths)}
    if true_labels is not None:
        columns["true_class"] = [class_names[int(k)] for k in true_labels]
    columns.update(
        {
            "predicted_class": [class_names[int(k)] for k in probs.argmax(axis=1)],
            "confidence": probs.max(axis=1),
            "uncertain": uncertain_mask(probs, threshold),
            **{f"prob_{name}": probs[:, k] for k, name in enumerate(class_names)},
        }
    )
    return pd.DataFrame(columns)
