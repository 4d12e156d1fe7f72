"""Time a preprocess config per image on real files (the ALDL paper reports 4.25 s per image).

    python -m leuk.cli.timing preprocess --preprocess aldl \\
        --images '../shared/data/all_taleqani/Original/*/*.jpg' --n 100 --fit 100

The command spreads the images evenly over the sorted matches (``pick_images``); the fitted steps
learn from ``--fit`` other images (as from a training split), then each of the ``--n`` timed images
is decoded and preprocessed in one thread, decoding timed apart.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import yaml
from omegaconf import OmegaConf

from leuk.config import config_dir
from leuk.data.decode import open_rgb
from leuk.preprocess.pipeline import PreprocessPipeline, build_preprocess


@dataclass
class Timing:
    preprocess: str
    n_images: int
    n_fit_images: int
    fit_seconds: float
    decode_ms_per_image: float
    preprocess_ms_per_image: float
    preprocess_ms_p95: float
    stats: dict


def load_preprocess(name: str, overrides: Sequence[str] = ()) -> PreprocessPipeline:
    """The pipeline of ``conf/preprocess/<name>.yaml``, with dotted ``key=value`` overrides
    (``steps.lesion.threshold=otsu``)."""
    cfg = OmegaConf.load(config_dir() / "preprocess" / f"{name}.yaml")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value")
        # update(), not merge(): a value replaces the node (a list stays a list, null removes a step).
        OmegaConf.update(cfg, key, yaml.safe_load(value), merge=False)
    return build_preprocess(cfg.get("steps"))


def _read(path: str) -> np.ndarray:
    return np.asarray(open_rgb(path), dtype=np.uint8)


def time_preprocess(
    pipeline: PreprocessPipeline, paths: Sequence[str], fit_paths: Sequence[str], name: str = ""
) -> Timing:
    start = time.perf_counter()
    pipeline.fit(_read(p) for p in fit_paths)
    fit_seconds = time.perf_counter() - start
    decode, work = [], []
    for p in paths:
        t0 = time.perf_counter()
        image = _read(p)
        t1 = time.perf_counter()
        pipeline(image)
        t2 = time.perf_counter()
        decode.append(t1 - t0)
        work.append(t2 - t1)
    return Timing(
        preprocess=name,
        n_images=len(paths),
        n_fit_images=len(fit_paths) if pipeline.needs_fit else 0,
        fit_seconds=round(fit_seconds, 3),
        decode_ms_per_image=round(1000 * float(np.mean(decode)), 3),
        preprocess_ms_per_image=round(1000 * float(np.mean(work)), 3),
        preprocess_ms_p95=round(1000 * float(np.percentile(work, 95)), 3),
        stats=pipeline.stats(),
    )


def pick_images(files: Sequence[str], n: int, fit: int) -> tuple[list[str], list[str]]:
    """``n`` timed and ``fit`` fitting images, evenly spread over the sorted ``files`` (every class
    folder), then dealt at random (seed 0)."""
    files = sorted(files)
    picked = np.random.default_rng(0).permutation(np.linspace(0, len(files) - 1, n + fit).astype(int))
    return [files[i] for i in picked[:n]], [files[i] for i in picked[n:]]
