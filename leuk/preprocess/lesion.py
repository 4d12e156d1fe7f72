"""ALDL's lesion segmentation by a purple index, and the crop of the largest lesion's box."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np
from skimage.filters import threshold_otsu
from skimage.measure import label, regionprops
from skimage.morphology import disk, remove_small_objects

from leuk.preprocess.base import EventCounter, PreprocessConfigError, Step

THRESHOLD_RANGE = (0.1, 0.3)


def purple_index(image: np.ndarray) -> np.ndarray:
    """PI = (R + B) / 2 − G on [0, 1] RGB: high where haematoxylin/Giemsa stains (violet nuclei)."""
    rgb = image.astype(np.float32) / 255.0
    return (rgb[..., 0] + rgb[..., 2]) / 2.0 - rgb[..., 1]


@dataclass(frozen=True)
class LesionSettings:
    """The segmentation's parameters, as the ALDL paper gives them (defaults)."""

    threshold: float | Literal["otsu"] = 0.15
    opening_radius: int = 3
    morph_iterations: int = 2
    min_area: int = 80
    smooth_sigma: float = 1.0


def lesion_mask(image: np.ndarray, s: LesionSettings) -> np.ndarray:
    """Boolean mask of the lesions (stained cells) of an RGB uint8 image.

    PI > θ (or Otsu's threshold of PI); an opening with a disk; then erosion applied
    ``morph_iterations`` times followed by as many dilations (an opening repeated with the same
    element would change nothing, so "erosion and dilation twice" is read as two of each in a row,
    which removes thin bridges up to twice as wide); connected components smaller than ``min_area``
    pixels removed; the mask smoothed by a Gaussian (σ = ``smooth_sigma``) and cut at one half.
    """
    pi = purple_index(image)
    theta = float(threshold_otsu(pi)) if s.threshold == "otsu" else float(s.threshold)
    mask = (pi > theta).astype(np.uint8)
    kernel = disk(s.opening_radius).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    if s.morph_iterations:
        mask = cv2.erode(mask, kernel, iterations=s.morph_iterations)
        mask = cv2.dilate(mask, kernel, iterations=s.morph_iterations)
    mask = remove_small_objects(mask.astype(bool), max_size=s.min_area - 1, connectivity=2)
    if s.smooth_sigma > 0:
        mask = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), s.smooth_sigma) > 0.5
    return mask


def touches_border(box: tuple[int, int, int, int], shape: tuple[int, ...]) -> bool:
    top, left, bottom, right = box
    return top == 0 or left == 0 or bottom == shape[0] or right == shape[1]


def largest_box(mask: np.ndarray, interior_first: bool = False) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right), exclusive ends, of the largest 8-connected region, or None.

    ``interior_first``: the largest region that does not touch the image border, where there is
    one. A cell cut by the border (or a smear smudge along it) can outsize every whole cell.
    """
    regions = regionprops(label(mask, connectivity=2))
    if interior_first:
        inside = [r for r in regions if not touches_border(r.bbox, mask.shape)]
        regions = inside or regions
    if not regions:
        return None
    biggest = max(regions, key=lambda r: r.area)
    return tuple(int(v) for v in biggest.bbox)  # type: ignore[return-value]


def expand_box(
    box: tuple[int, int, int, int], margin: float, shape: tuple[int, ...], square: bool
) -> tuple[int, int, int, int]:
    """``box`` grown by ``margin`` × its side on every side (made square first if asked), in the image."""
    top, left, bottom, right = box
    h, w = bottom - top, right - left
    if square:
        side = max(h, w)
        top, left = top - (side - h) / 2, left - (side - w) / 2
        h = w = side
    top, bottom = top - margin * h, top + h + margin * h
    left, right = left - margin * w, left + w + margin * w
    height, width = shape[:2]
    return (
        max(0, int(np.floor(top))),
        max(0, int(np.floor(left))),
        min(height, int(np.ceil(bottom))),
        min(width, int(np.ceil(right))),
    )


class LesionCrop(Step):
    """ALDL's region of interest: the box of the largest lesion, cropped and resized (bilinear).

    The crop is taken from this step's input (in ``preprocess=aldl`` the CLAHE- and
    Reinhard-normalised image, so the classifier sees the same colours it was segmented on), not
    from the mask. ``margin`` widens the box by that fraction of its height/width on each side;
    ``square: true`` first makes it square around its centre, so the resize does not distort the
    cell (the paper resizes the box as it is). Where no lesion is found the whole image is used and
    the event counted (``stats()["no_lesion"]``).
    """

    name = "lesion_crop"

    def __init__(
        self,
        threshold: float | Literal["otsu"] = 0.15,
        margin: float = 0.1,
        size: int = 224,
        square: bool = False,
        opening_radius: int = 3,
        morph_iterations: int = 2,
        min_area: int = 80,
        smooth_sigma: float = 1.0,
        interior_first: bool = False,
    ) -> None:
        lo, hi = THRESHOLD_RANGE
        if threshold != "otsu" and (isinstance(threshold, (bool, str)) or not lo <= float(threshold) <= hi):
            raise PreprocessConfigError(
                f"lesion_crop.threshold (θ, on the purple index) must be in [{lo}, {hi}] or 'otsu'; "
                f"got {threshold!r}"
            )
        if not 0 <= margin <= 1:
            raise PreprocessConfigError(f"lesion_crop.margin must be in [0, 1], got {margin}")
        if size < 16:
            raise PreprocessConfigError(f"lesion_crop.size must be ≥ 16 px, got {size}")
        if opening_radius < 1 or morph_iterations < 0 or min_area < 1 or smooth_sigma < 0:
            raise PreprocessConfigError(
                "lesion_crop: opening_radius and min_area must be ≥ 1, morph_iterations and "
                f"smooth_sigma ≥ 0; got {opening_radius}, {min_area}, {morph_iterations}, {smooth_sigma}"
            )
        super().__init__(
            threshold=threshold if threshold == "otsu" else float(threshold),
            margin=float(margin),
            size=int(size),
            square=bool(square),
            opening_radius=int(opening_radius),
            morph_iterations=int(morph_iterations),
            min_area=int(min_area),
            smooth_sigma=float(smooth_sigma),
            interior_first=bool(interior_first),
        )
        self.settings = LesionSettings(
            threshold=self.params["threshold"],
            opening_radius=self.params["opening_radius"],
            morph_iterations=self.params["morph_iterations"],
            min_area=self.params["min_area"],
            smooth_sigma=self.params["smooth_sigma"],
        )
        self._events = EventCounter("images", "no_lesion", "at_border")

    def find(self, image: np.ndarray) -> tuple[int, int, int, int] | None:
        """The crop box (top, left, bottom, right) for ``image``, or None where no lesion is found."""
        box = largest_box(lesion_mask(image, self.settings), self.params["interior_first"])
        if box is None:
            return None
        if touches_border(box, image.shape):
            self._events.add("at_border")
        return expand_box(box, self.params["margin"], image.shape, self.params["square"])

    def apply(self, image: np.ndarray) -> np.ndarray:
        box = self.find(image)
        self._events.add("images")
        if box is None:
            self._events.add("no_lesion")
            roi = image
        else:
            top, left, bottom, right = box
            roi = image[top:bottom, left:right]
        size = self.params["size"]
        return cv2.resize(np.ascontiguousarray(roi), (size, size), interpolation=cv2.INTER_LINEAR)

    def stats(self) -> dict[str, Any]:
        return self._events.as_dict()
