"""Class balancing of the training split (never validation or test)."""

from __future__ import annotations

from typing import Literal

import numpy as np
from skimage.color import hsv2rgb, rgb2hsv

BalanceMethod = Literal["none", "oversample", "weighted_sampler", "class_weights", "hsv_copy"]
BALANCE_METHODS = ("none", "oversample", "weighted_sampler", "class_weights", "hsv_copy")


def desaturated_hsv_copy(image: np.ndarray, as_rgb: bool = False) -> np.ndarray:
    """MobileNet_M's extra copy of a HEM cell: the image in HSV with the saturation set to zero.

    The paper's figure shows the HSV array itself used as the image (H, 0, V in the RGB slots),
    which is the default; ``as_rgb`` converts the desaturated HSV back to RGB (a grey image) instead.
    """
    hsv = rgb2hsv(image)
    hsv[..., 1] = 0.0
    out = hsv2rgb(hsv) if as_rgb else hsv
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def oversample_indices(train: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """Training indices with each class's images repeated (drawn with replacement, seeded) up to the
    largest class's count."""
    rng = np.random.default_rng(seed)
    counts = np.bincount(labels[train])
    target = counts.max()
    parts = [train]
    for c, n in enumerate(counts):
        if 0 < n < target:
            members = train[labels[train] == c]
            parts.append(rng.choice(members, size=target - n, replace=True))
    return np.concatenate(parts)


def inverse_frequency_weights(train_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class weights n / (C · n_c) (scikit-learn's 'balanced'), from the training split only."""
    counts = np.bincount(train_labels, minlength=num_classes).astype(np.float64)
    return len(train_labels) / (num_classes * np.maximum(counts, 1))
