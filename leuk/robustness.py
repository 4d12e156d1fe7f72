"""Gaussian-noise robustness (the MobileNet_M paper's table): metrics on noisy copies of a test set.

Shared by ``leuk.eval`` (any checkpoint, any folder) and training (``noise_sigmas`` in the run
config: the run's own test split, right after its test, so a sweep's report can average the table).
The noisy copies go through ``trainer.predict`` like the clean images (``PredictionDataModule.noisy``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np

from leuk.data.prediction import PredictionDataModule
from leuk.metrics import compute_metrics
from leuk.predictions import predict_probs, prediction_trainer
from leuk.utils.report import noise_key


def noise_rows(
    module: L.LightningModule,
    images: np.ndarray | PredictionDataModule,
    labels: np.ndarray,
    class_names: Sequence[str],
    sigmas: Sequence[float],
    batch_size: int,
    seed: int,
    prefix: str = "test/",
    trainer: L.Trainer | None = None,
) -> list[dict[str, Any]]:
    """One row per σ: the aggregate metrics (no per-class values) on ``images`` (HWC uint8, or a
    set-up ``PredictionDataModule``) with zero-mean noise of σ per pixel and channel, clipped to 0–255.

    ``trainer``: a prediction Trainer (``leuk.predictions.prediction_trainer``); by default one on
    the module's device. Everything happens in this process (no DDP collective), so one rank may
    call it alone."""
    if isinstance(images, PredictionDataModule):
        clean = images
    else:
        paths = [str(i) for i in range(len(images))]
        clean = PredictionDataModule(
            paths, images.shape[1], labels=labels, batch_size=batch_size, images=images
        )
    if trainer is None:
        trainer = prediction_trainer(next(module.parameters()).device)
    rows = []
    for sigma in sigmas:
        # The same seed for every σ: the rows differ by the noise's strength, not by its draw.
        probs = predict_probs(trainer, module, clean.noisy(float(sigma), seed))
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


def shift_rows(
    module: L.LightningModule,
    clean: PredictionDataModule,
    class_names: Sequence[str],
    shifts: dict[str, Sequence[float]],
    seed: int,
    confident: float,
    prefix: str = "test/",
    trainer: L.Trainer | None = None,
) -> list[dict[str, Any]]:
    """One row per (shift, strength) of ``leuk.shifts``: the aggregate metrics on the shifted
    images, and how many predictions are wrong yet confident (top probability ≥ ``confident``):
    abstention helps under shift only if confidence drops as the input changes. With per-lesion
    patches the shift acts on each patch, an image is scored by its patches' mean, and
    ``n_unchanged`` counts patches."""
    from leuk.shifts import shifted

    clean.setup()
    if trainer is None:
        trainer = prediction_trainer(next(module.parameters()).device)
    labels = clean.labels
    rows = []
    for name, strengths in shifts.items():
        for strength in strengths:
            images, unchanged = shifted(clean.images, name, float(strength), seed)
            data = PredictionDataModule(
                clean.paths,
                clean.image_size,
                labels=labels,
                batch_size=clean.batch_size,
                images=images,
                owner=clean.owner,
            )
            probs = predict_probs(trainer, module, data)
            values = compute_metrics(probs, labels, list(class_names), prefix=prefix)
            wrong = probs.argmax(axis=1) != labels
            sure = probs.max(axis=1) >= confident
            rows.append(
                {
                    "shift": name,
                    "strength": float(strength),
                    **{k: v for k, v in values.items() if k.count("/") == 1},
                    "n_wrong": int(wrong.sum()),
                    "n_wrong_confident": int((wrong & sure).sum()),
                    "n_unchanged": unchanged,
                }
            )
    return rows
