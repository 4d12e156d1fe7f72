"""Additive Gaussian noise with σ on the 0–255 scale, as an albumentations transform.

albumentations 2.0.8's ``GaussNoise`` cannot give MobileNet_M's σ = 3 or σ = 9: its ``std_range``
is a fraction of the maximum (3/255 would do), but on uint8 images it adds the noise map through
albucore, which truncates each value toward zero before adding. A N(0, 3) map truncated has a
standard deviation of 2.63, N(0, 9) one of 8.60 (measured: 2.62 and 8.61 on a flat grey image),
and no pixel moves by less than one level. Here the noise is added in float and rounded once.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import numpy as np
from albumentations.core.transforms_interface import BaseTransformInitSchema
from pydantic import Field


class AdditiveGaussianNoise(A.ImageOnlyTransform):
    """Add N(0, ``sigma``²) noise, ``sigma`` in grey levels of 0–255, per pixel and channel.

    ``per_channel: false`` draws one value per pixel for all channels. A float image (0–1) gets
    ``sigma`` / 255. The result is rounded and clipped to the image's range.
    """

    class InitSchema(BaseTransformInitSchema):
        sigma: float = Field(gt=0, le=255)
        per_channel: bool

    def __init__(self, sigma: float = 3.0, per_channel: bool = True, p: float = 0.5) -> None:
        super().__init__(p=p)
        self.sigma = sigma
        self.per_channel = per_channel

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        image = data["image"] if "image" in data else data["images"][0]
        shape = image.shape if self.per_channel or image.ndim == 2 else (*image.shape[:-1], 1)
        scale = self.sigma if image.dtype == np.uint8 else self.sigma / 255.0
        # The pipeline's one generator, which the training dataset reseeds for every sample from the
        # run seed, epoch and position (leuk.data.dataset): same seed, same noise, any num_workers.
        return {"noise": self.random_generator.normal(0.0, scale, size=shape).astype(np.float32)}

    def apply(self, img: np.ndarray, noise: np.ndarray, **params: Any) -> np.ndarray:
        noisy = img.astype(np.float32) + noise
        if img.dtype == np.uint8:
            return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
        return np.clip(noisy, 0.0, 1.0).astype(img.dtype)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("sigma", "per_channel")
