"""Calibration: expected calibration error, the reliability diagram's bins, temperature scaling.

The temperature is fitted on the validation split only (Guo et al., 2017): one scalar T > 0 that
minimizes the negative log-likelihood of ``softmax(log p / T)``; dividing the log-probabilities by T
keeps every prediction's class, so accuracy is unchanged and only the confidence moves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax


@dataclass(frozen=True)
class ReliabilityBins:
    """Equal-width confidence bins: their edges, and per bin the count, mean confidence and accuracy
    (NaN where a bin is empty)."""

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray


def _check(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"calibration: probabilities {probs.shape} do not match {len(labels)} labels")
    return probs, labels


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> ReliabilityBins:
    """The top-label confidence of each prediction, binned into ``n_bins`` equal-width bins of (0, 1]."""
    probs, labels = _check(probs, labels)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Right-closed bins, (0, 1/n], ..., as the usual ECE definition; a confidence of 0 cannot occur.
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=confidence, minlength=n_bins) / counts
        accuracy = np.bincount(which, weights=correct.astype(np.float64), minlength=n_bins) / counts
    return ReliabilityBins(edges, counts, mean_conf, accuracy)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    """ECE: the count-weighted mean over bins of |accuracy − mean confidence| (top-label)."""
    bins = reliability_bins(probs, labels, n_bins)
    filled = bins.counts > 0
    if not filled.any():
        return float("nan")
    gap = np.abs(bins.accuracy[filled] - bins.confidence[filled])
    return float(np.sum(gap * bins.counts[filled]) / bins.counts.sum())


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)``: the probabilities at temperature ``temperature``."""
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), np.finfo(np.float64).tiny, None))
    return np.exp(log_softmax(logp / temperature, axis=1))


def _nll(probs: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    logp = np.log(np.clip(probs, np.finfo(np.float64).tiny, None))
    return float(-log_softmax(logp / temperature, axis=1)[np.arange(len(labels)), labels].mean())


def fit_temperature(probs: np.ndarray, labels: np.ndarray, bounds: tuple[float, float]) -> float:
    """The temperature in ``bounds`` that minimizes the negative log-likelihood of ``labels``
    (searched on log T, where the likelihood is smooth and the search is scale-free)."""
    probs, labels = _check(probs, labels)
    if len(labels) == 0:
        raise ValueError("fit_temperature: no validation images to fit the temperature on")
    low, high = np.log(bounds[0]), np.log(bounds[1])
    result = minimize_scalar(
        lambda log_t: _nll(probs, labels, float(np.exp(log_t))), bounds=(low, high), method="bounded"
    )
    return float(np.exp(result.x))


def calibration_report(
    val_probs: np.ndarray | None,
    val_labels: np.ndarray | None,
    test_probs: np.ndarray,
    test_labels: np.ndarray,
    n_bins: int,
    bounds: tuple[float, float],
) -> dict[str, float | None]:
    """ECE on the test set before and after temperature scaling fitted on the validation set (no
    validation set: no scaling, ``temperature`` None)."""
    report: dict[str, float | None] = {
        "ece": expected_calibration_error(test_probs, test_labels, n_bins),
        "n_bins": n_bins,
        "temperature": None,
        "ece_scaled": None,
        "val_ece": None,
    }
    if val_probs is not None and val_labels is not None and len(val_labels) > 0:
        t = fit_temperature(val_probs, val_labels, bounds)
        report.update(
            temperature=t,
            ece_scaled=expected_calibration_error(apply_temperature(test_probs, t), test_labels, n_bins),
            val_ece=expected_calibration_error(val_probs, val_labels, n_bins),
        )
    return report
