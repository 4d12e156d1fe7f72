"""Stain variation: the HED colour jitter of Tellez et al. (2018), as the ``hed`` shift of
``leuk.eval`` applies it to a test set and as a training augmentation (the ``stain`` config
group), so that the two mean the same strength.

The image is taken to haematoxylin, eosin and DAB optical densities (skimage's ``rgb2hed``); each
channel is scaled by a factor drawn from U(1 − s, 1 + s) and shifted by one drawn from U(−s, s),
once per image, and taken back to RGB.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import numpy as np
from albumentations.core.transforms_interface import BaseTransformInitSchema
from pydantic import Field
from skimage.color import hed2rgb, rgb2hed


def hed_jitter(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """``image`` (HxWx3 uint8 RGB) with its HED optical densities jittered at ``strength``."""
    hed = rgb2hed(image)
    alpha = rng.uniform(1.0 - strength, 1.0 + strength, size=3)
    beta = rng.uniform(-strength, strength, size=3)
    return np.clip(np.rint(hed2rgb(hed * alpha + beta) * 255.0), 0, 255).astype(np.uint8)


class HEDJitter(A.ImageOnlyTransform):
    """Stain variation at ``strength`` s (``hed_jitter``) for a share ``p`` of the training draws.

    Uint8 RGB images only (the training images leuk decodes).
    """

    class InitSchema(BaseTransformInitSchema):
        # s >= 1 could scale a stain's density to zero or below: no longer a stain change.
        strength: float = Field(gt=0, lt=1)

    def __init__(self, strength: float = 0.05, p: float = 0.5) -> None:
        super().__init__(p=p)
        self.strength = strength

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        # The pipeline's one generator, reseeded per sample by the training dataset (leuk.data.dataset).
        return {"seed": int(self.random_generator.integers(2**31))}

    def apply(self, img: np.ndarray, seed: int, **params: Any) -> np.ndarray:
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
            raise ValueError("HEDJitter takes HxWx3 uint8 RGB images")
        return hed_jitter(img, self.strength, np.random.default_rng(seed))
