"""The stained cell and its background: the mask the background shift of ``leuk.eval`` removes
the background with, and a training augmentation that replaces the background so that a model
learns from the cell rather than from the smear around it.

The cell is the lesion mask of ``leuk.preprocess.lesion`` (the ALDL paper's purple-index rule at
its defaults) dilated by a few pixels, which takes in the cytoplasm around the nucleus. An image
where no cell is found is left as it is.
"""

from __future__ import annotations

from typing import Any, Literal

import albumentations as A
import cv2
import numpy as np
from albumentations.core.transforms_interface import BaseTransformInitSchema
from pydantic import Field

from leuk.preprocess.lesion import LesionSettings, lesion_mask

Fill = Literal["black", "color", "noise", "random"]
FILLS: tuple[str, ...] = ("black", "color", "noise")


def cell_mask(image: np.ndarray, dilation: float, settings: LesionSettings | None = None) -> np.ndarray:
    """The stained cell: the lesion mask dilated by ``dilation`` pixels (boolean HxW)."""
    mask = lesion_mask(image, settings or LesionSettings()).astype(np.uint8)
    radius = round(dilation)
    if radius > 0 and mask.any():
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        mask = cv2.dilate(mask, kernel)
    return mask.astype(bool)


def fill_background(image: np.ndarray, mask: np.ndarray, fill: str, rng: np.random.Generator) -> np.ndarray:
    """``image`` (HxWx3 uint8) with the pixels outside ``mask`` replaced: ``black``; ``color``, one
    uniform colour drawn per image; ``noise``, uniform noise per pixel and channel."""
    if fill == "black":
        background = np.zeros_like(image)
    elif fill == "color":
        background = np.broadcast_to(rng.integers(0, 256, size=3, dtype=np.uint8), image.shape)
    elif fill == "noise":
        background = rng.integers(0, 256, size=image.shape, dtype=np.uint8)
    else:
        raise ValueError(f"fill must be one of {', '.join(FILLS)}; got '{fill}'")
    return np.where(mask[..., None], image, background).astype(np.uint8)


class BackgroundRandomization(A.ImageOnlyTransform):
    """Replace everything outside the stained cell (``cell_mask`` dilated by ``dilation`` px).

    ``fill``: ``black`` (the cell kept on black, as segmented releases of blood-smear data sets
    ship it), ``color``, ``noise``, or ``random``: one of the three drawn per image. With ``p`` < 1
    the model also keeps seeing the images as they are. Uint8 RGB images only (the training images
    leuk decodes).
    """

    class InitSchema(BaseTransformInitSchema):
        fill: Fill
        dilation: float = Field(ge=0)

    def __init__(self, fill: Fill = "random", dilation: float = 4.0, p: float = 0.5) -> None:
        super().__init__(p=p)
        self.fill = fill
        self.dilation = dilation

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        # The pipeline's one generator, reseeded per sample by the training dataset (leuk.data.dataset).
        fill = self.fill if self.fill != "random" else FILLS[int(self.random_generator.integers(len(FILLS)))]
        return {"fill_with": fill, "seed": int(self.random_generator.integers(2**31))}

    def apply(self, img: np.ndarray, fill_with: str, seed: int, **params: Any) -> np.ndarray:
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
            raise ValueError("BackgroundRandomization takes HxWx3 uint8 RGB images")
        mask = cell_mask(img, self.dilation)
        if not mask.any():
            return img
        return fill_background(img, mask, fill_with, np.random.default_rng(seed))

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("fill", "dilation")
