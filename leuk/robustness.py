"""Gaussian-noise robustness (the MobileNet_M paper's table): metrics on noisy copies of a test set.

Shared by ``leuk.eval`` (any checkpoint, any folder) and ``leuk.train`` (``noise_sigmas`` in the run
config: the run's own test split, right after its test, so a sweep's report can average the table).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from leuk.inference import predict_proba
from leuk.metrics import compute_metrics
from leuk.models.module import Classifier
from leuk.utils.report import noise_key


def noise_rows(
    module: Classifier,
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    sigmas: Sequence[float],
    batch_size: int,
    seed: int,
    prefix: str = "test/",
) -> list[dict[str, Any]]:
    """One row per σ: the aggregate metrics (no per-class values) on ``images`` with zero-mean
    noise of σ per pixel and channel, clipped to 0–255.

    Everything happens in this process (no DDP collective), so one rank may call it alone."""
    rows = []
    for sigma in sigmas:
        # The same seed for every σ: the rows differ by the noise's strength, not by its draw.
        probs = predict_proba(module, images, batch_size, noise_sigma=float(sigma), seed=seed)
        values = compute_metrics(probs, labels, list(class_names), prefix=prefix)
        rows.append({"sigma": float(sigma), **{k: v for k, v in values.items() if k.count("/") == 1}})
    return rows


def flatten(rows: Sequence[dict[str, Any]], prefix: str = "test/") -> dict[str, float]:
    """``noise_rows`` as flat keys (``noise/<σ>/<metric>``), what the report and W&B read."""
    flat = {}
    for row in rows:
        for key, value in row.items():
            if key.startswith(prefix):
                flat[noise_key(row["sigma"], key[len(prefix) :])] = value
    return flat
