"""A trained run, reloaded for evaluation and prediction.

The checkpoint holds the model (its hyperparameters rebuild the ``Classifier``); the run folder
around it holds the split (``split.csv``) and, for runs started from the command line, the composed
config (``.hydra/config.yaml``), whose ``preprocess`` steps new images must go through as the
training images did. Images are decoded, preprocessed and resized exactly as in training
(``leuk.data.decode.decode_file``) and normalized as ``Classifier.on_after_batch_transfer`` does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from leuk.data.decode import decode_file, open_rgb
from leuk.models.module import Classifier

log = logging.getLogger(__name__)

Preprocess = Callable[[np.ndarray], np.ndarray]


def resolve_device(name: str) -> torch.device:
    """``auto``: the GPU when there is one, else the CPU; or any torch device name."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_classifier(ckpt_path: str | Path, device: torch.device) -> Classifier:
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path: no such checkpoint '{path}'")
    try:
        module = Classifier.from_checkpoint(str(path), map_location="cpu")
    except KeyError as exc:
        raise ValueError(f"ckpt_path: '{path}' is not a leuk checkpoint (it lacks {exc})") from exc
    return module.to(device).eval()


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


def _preprocess_for(run_cfg: DictConfig | None, saved_steps: Any = None) -> Any | None:
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


def preprocess_for_run(
    run_dir: Path, split: pd.DataFrame | None, module: Classifier | None = None
) -> Any | None:
    """``_preprocess_for`` the run's config (or ``module``'s saved steps), fitted, where a step needs
    it, on the run's training images at full resolution (as the DataModule fits it): the same images
    give the same state."""
    saved = module.hparams.get("preprocess_steps") if module is not None else None
    pipeline = _preprocess_for(load_run_config(run_dir), saved)
    if pipeline is None or not pipeline.needs_fit:
        return pipeline
    if split is None:
        raise FileNotFoundError(
            f"the run's preprocessing is fitted on its training images, but {run_dir} has no split.csv"
        )
    train_paths = split.loc[split["split"] == "train", "path"].tolist()
    pipeline.fit(np.asarray(open_rgb(p)) for p in train_paths)
    return pipeline


def describe_preprocess(pipeline: Any | None) -> str:
    return "none" if pipeline is None else pipeline.cache_key()


def decode_images(
    paths: Sequence[str], size: int, preprocess: Preprocess | None = None, threads: int | None = None
) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """Decode ``paths`` as training does; return the readable ones' pixels (N×size×size×3 uint8),
    their positions in ``paths``, and (path, reason) for each unreadable file."""

    def one(path: str) -> np.ndarray | str:
        try:
            return decode_file(path, size, preprocess)
        except (OSError, ValueError) as exc:
            return str(exc)

    workers = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, paths))
    ok = [i for i, r in enumerate(results) if isinstance(r, np.ndarray)]
    bad = [(paths[i], str(r)) for i, r in enumerate(results) if not isinstance(r, np.ndarray)]
    images = np.stack([results[i] for i in ok]) if ok else np.zeros((0, size, size, 3), np.uint8)
    return images, ok, bad


def normalize(module: Classifier, x: torch.Tensor) -> torch.Tensor:
    """Pixel values on the 0–255 scale (uint8 or float, NCHW) → the network's input."""
    x = x.float().div(255.0)
    x = (x - module.mean.to(x.device)) / module.std.to(x.device)
    if module.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def batches(images: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
    """NHWC uint8 → NCHW uint8 tensors of ``batch_size`` images."""
    for start in range(0, len(images), batch_size):
        yield torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).permute(0, 3, 1, 2)


def add_noise(x: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Zero-mean Gaussian noise of ``sigma`` (0–255 scale), per pixel and channel, clipped to [0, 255].

    Drawn on the CPU from ``generator``, so a seed gives the same noise on any device.
    """
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float32)
    return (x.float() + sigma * noise).clamp_(0.0, 255.0)


@torch.no_grad()
def predict_proba(
    module: Classifier,
    images: np.ndarray,
    batch_size: int,
    noise_sigma: float | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Softmax probabilities (N×C) of the network on ``images``; with ``noise_sigma``, on noisy copies
    (σ = 0 goes through the same path and gives the clean values)."""
    device = module.mean.device
    generator = torch.Generator().manual_seed(seed)
    out = []
    for x in batches(images, batch_size):
        pixels = add_noise(x, noise_sigma, generator) if noise_sigma is not None else x
        logits = module.net(normalize(module, pixels.to(device)))
        out.append(logits.float().softmax(dim=1).cpu())
    if not out:
        return np.zeros((0, module.hparams.num_classes), np.float32)
    return torch.cat(out).numpy()


@torch.no_grad()
def penultimate_features(module: Classifier, images: np.ndarray, batch_size: int) -> np.ndarray:
    """The network's features before its last layer (``forward_head(..., pre_logits=True)``)."""
    net = module.net
    if not all(callable(getattr(net, f, None)) for f in ("forward_features", "forward_head")):
        raise TypeError(
            f"model '{module.model_name}' has no forward_features/forward_head, so its penultimate "
            "features cannot be read"
        )
    device = module.mean.device
    out = []
    for x in batches(images, batch_size):
        feats = net.forward_head(net.forward_features(normalize(module, x.to(device))), pre_logits=True)
        out.append(feats.float().flatten(1).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)
