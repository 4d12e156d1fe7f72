"""Reinhard colour transfer in LAB: each image's channel means and spreads moved to a reference's."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from leuk.data.decode import open_rgb
from leuk.preprocess.base import NotFittedError, PreprocessConfigError, Step, check_image

# Rounding of the fitted statistics in the cache key: far below one grey level, far above float noise.
_KEY_DECIMALS = 4


def lab_float(image: np.ndarray) -> np.ndarray:
    """CIE LAB of a uint8 RGB image in float32: L in [0, 100], a and b within about [-128, 127]."""
    return cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def lab_mean_std(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of an RGB image's LAB values (float64, shape (3,))."""
    lab = lab_float(image).reshape(-1, 3).astype(np.float64)
    return lab.mean(axis=0), lab.std(axis=0)


class Reinhard(Step):
    """Stain normalisation by Reinhard et al. (2001), in OpenCV's CIE LAB.

    The reference is either one image (``reference``: a path, read at construction) or, by default,
    learnt by ``fit`` from the training images the caller passes: the average over those images of
    each image's LAB channel means and of its standard deviations. A reference made of averages of
    per-image statistics is a typical training image; pooling all pixels instead would add the
    spread between images to the target standard deviation and over-stretch every image.
    ``fit`` replaces any earlier reference, so only the images of the last call count.
    """

    name = "reinhard"

    def __init__(self, reference: str | None = None) -> None:
        super().__init__(reference=reference)
        self.needs_fit = reference is None
        self.target_mean: np.ndarray | None = None
        self.target_std: np.ndarray | None = None
        self.n_fit_images = 0
        if reference is not None:
            path = Path(reference).expanduser()
            if not path.is_file():
                raise PreprocessConfigError(f"reinhard.reference: no image file at '{reference}'")
            # The training images' decoding (16-bit images scaled by their bit depth, not clipped).
            ref = np.asarray(open_rgb(path), dtype=np.uint8)
            self.target_mean, self.target_std = lab_mean_std(ref)
            self.n_fit_images = 1

    def fit(self, images: Iterable[np.ndarray]) -> None:
        if not self.needs_fit:
            return
        mean_sum = np.zeros(3)
        std_sum = np.zeros(3)
        n = 0
        for image in images:
            check_image(image, "reinhard.fit")
            m, s = lab_mean_std(image)
            mean_sum += m
            std_sum += s
            n += 1
        if n == 0:
            raise ValueError("reinhard.fit: no training images were given to compute the reference from")
        self.target_mean, self.target_std = mean_sum / n, std_sum / n
        self.n_fit_images = n

    def _target(self) -> tuple[np.ndarray, np.ndarray]:
        if self.target_mean is None or self.target_std is None:
            raise NotFittedError(
                "reinhard: call fit() with the training images first (or set preprocess reinhard.reference)"
            )
        return self.target_mean, self.target_std

    def fitted_state(self) -> dict[str, Any]:
        mean, std = self._target()
        return {
            "mean": [round(float(v), _KEY_DECIMALS) for v in mean],
            "std": [round(float(v), _KEY_DECIMALS) for v in std],
        }

    def apply(self, image: np.ndarray) -> np.ndarray:
        target_mean, target_std = self._target()
        lab = lab_float(image)
        flat = lab.reshape(-1, 3)
        mean, std = flat.mean(axis=0), flat.std(axis=0)
        # A flat channel (std 0) has no spread to rescale: it is only shifted to the target mean.
        scale = np.where(std > 1e-6, target_std / np.maximum(std, 1e-6), 1.0)
        lab = ((lab - mean) * scale + target_mean).astype(np.float32)
        rgb = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
        return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)

    def stats(self) -> dict[str, Any]:
        return {"fit_images": self.n_fit_images}
