"""The hybrid classifier of the ALDL paper (its contribution 3): XGBoost on the network's
penultimate features, fitted on the training split, scored beside the network itself."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from leuk.metrics import compute_metrics, confusion_matrix


def require_xgboost() -> None:
    try:
        import xgboost  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "xgboost=true needs the xgboost package: pip install 'leuk[xgboost]' (or pip install xgboost)"
        ) from exc


def xgboost_report(
    features: Mapping[str, tuple[np.ndarray, np.ndarray]],
    class_names: Sequence[str],
    params: Mapping[str, Any],
    seed: int,
) -> dict[str, Any]:
    """Fit on ``features["train"]`` (X, y); score every other split given, with the network's metrics."""
    from xgboost import XGBClassifier

    train_x, train_y = features["train"]
    missing = sorted(set(range(len(class_names))) - set(np.unique(train_y).tolist()))
    if missing:
        raise ValueError(
            f"XGBoost needs training images of every class; none of {[class_names[k] for k in missing]}"
        )
    model = XGBClassifier(**{"random_state": seed, **dict(params)})
    model.fit(train_x, train_y)
    report: dict[str, Any] = {
        "params": {"random_state": seed, **dict(params)},
        "n_features": int(train_x.shape[1]),
        "n_train": len(train_y),
    }
    for split, (x, y) in features.items():
        if split == "train" or not len(y):
            continue
        probs = model.predict_proba(x)
        report[split] = {
            **compute_metrics(probs, y, class_names, prefix=f"{split}/"),
            f"{split}/confusion_matrix": confusion_matrix(probs, y, len(class_names)),
            f"n_{split}": len(y),
        }
    return report
