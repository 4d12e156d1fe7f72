"""Abstention: a prediction whose softmax confidence (its largest probability) is below a threshold
is flagged uncertain and left to a person; the rest is the covered part."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# The thresholds of the coverage/accuracy curve: every 0.05 from 0 (everything covered) to 1.
CURVE_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(21))


def uncertain_mask(probs: np.ndarray, threshold: float) -> np.ndarray:
    """True where the prediction's confidence is below ``threshold`` (0 flags nothing)."""
    return np.asarray(probs).max(axis=1) < threshold


def abstention(
    probs: np.ndarray, targets: np.ndarray, threshold: float, class_names: Sequence[str]
) -> dict[str, Any]:
    """Coverage, accuracy on the covered part and the uncertain images per class at ``threshold``."""
    preds = probs.argmax(axis=1)
    uncertain = uncertain_mask(probs, threshold)
    covered = ~uncertain
    correct = preds == targets
    return {
        "threshold": float(threshold),
        "n_images": len(targets),
        "n_uncertain": int(uncertain.sum()),
        "coverage": float(covered.mean()) if len(targets) else None,
        "accuracy_covered": float(correct[covered].mean()) if covered.any() else None,
        "accuracy_all": float(correct.mean()) if len(targets) else None,
        "uncertain_by_true_class": {
            name: int((uncertain & (targets == k)).sum()) for k, name in enumerate(class_names)
        },
        "uncertain_by_predicted_class": {
            name: int((uncertain & (preds == k)).sum()) for k, name in enumerate(class_names)
        },
    }


def coverage_curve(
    probs: np.ndarray, targets: np.ndarray, thresholds: Sequence[float] = CURVE_THRESHOLDS
) -> list[dict[str, Any]]:
    """Coverage and accuracy on the covered part at each threshold (accuracy None where none is covered)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == targets
    curve = []
    for t in thresholds:
        covered = confidence >= t
        curve.append(
            {
                "threshold": float(t),
                "coverage": float(covered.mean()) if len(targets) else 0.0,
                "accuracy": float(correct[covered].mean()) if covered.any() else None,
            }
        )
    return curve
