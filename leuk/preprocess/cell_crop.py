"""MobileNet_M's centre crop for C-NMC: the square around the cell, then a resize.

C-NMC 2019 images are 450×450 with one segmented cell on a black background. On the 52 images of
the shared sample the cell's box is 157 to 352 px wide (median 230) and not always central:
cytoplasm reaches x = 448 in UID_1_2_1_all and y = 49 in UID_11_1_2_all, so a fixed central crop
cuts cells (a central 0.6 of the side cuts 12 of the 52, 0.8 cuts 2, even 0.95 cuts one) while
leaving small cells small. The default is
therefore the box of the non-black pixels, made square around its centre (no distortion), widened by
``margin`` and padded with black where it leaves the image. ``mode: center`` is the paper's reading
(Sec. 3.2: cropped about the image's centre, keeping the whole cell): a square centred on the image,
as small as holds the cell's box, widened by ``margin``. ``mode: fraction`` is a fixed central crop
(a side of ``fraction`` × the image's).
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
from skimage.morphology import remove_small_objects

from leuk.preprocess.base import PreprocessConfigError, Step


def foreground_box(image: np.ndarray, threshold: int, min_area: int) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) of the pixels brighter than ``threshold`` in any channel.

    Specks (under ``min_area`` pixels: the C-NMC masks leave a few dim pixels at 1–10) are ignored.
    """
    mask = remove_small_objects(image.max(axis=2) > threshold, max_size=min_area - 1, connectivity=2)
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    return int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1


def square_crop(image: np.ndarray, center: tuple[float, float], side: int) -> np.ndarray:
    """A ``side``×``side`` crop centred on ``center`` (y, x), black outside the image."""
    top = round(center[0] - side / 2)
    left = round(center[1] - side / 2)
    h, w = image.shape[:2]
    out = np.zeros((side, side, image.shape[2]), dtype=image.dtype)
    src_t, src_l = max(0, top), max(0, left)
    src_b, src_r = min(h, top + side), min(w, left + side)
    if src_b > src_t and src_r > src_l:
        out[src_t - top : src_b - top, src_l - left : src_r - left] = image[src_t:src_b, src_l:src_r]
    return out


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    # INTER_AREA averages when shrinking (no aliasing of the chromatin texture); bilinear to enlarge.
    shrink = image.shape[0] > size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


class CellCenterCrop(Step):
    """Crop the whole cell (``mode: bbox`` centred on the cell, ``mode: center`` centred on the
    image) or a fixed central part (``mode: fraction``), then resize."""

    name = "cnmc_center_crop"

    def __init__(
        self,
        mode: Literal["bbox", "center", "fraction"] = "bbox",
        size: int = 224,
        margin: float = 0.05,
        threshold: int = 10,
        min_area: int = 64,
        fraction: float = 0.8,
    ) -> None:
        if mode not in ("bbox", "center", "fraction"):
            raise PreprocessConfigError(
                f"cnmc_center_crop.mode must be bbox, center or fraction; got {mode!r}"
            )
        if size < 16:
            raise PreprocessConfigError(f"cnmc_center_crop.size must be ≥ 16 px, got {size}")
        if not 0 <= margin <= 1:
            raise PreprocessConfigError(f"cnmc_center_crop.margin must be in [0, 1], got {margin}")
        if not 0 <= threshold < 255:
            raise PreprocessConfigError(f"cnmc_center_crop.threshold must be in [0, 254], got {threshold}")
        if not 0 < fraction <= 1:
            raise PreprocessConfigError(f"cnmc_center_crop.fraction must be in (0, 1], got {fraction}")
        if min_area < 1:
            raise PreprocessConfigError(f"cnmc_center_crop.min_area must be ≥ 1, got {min_area}")
        super().__init__(
            mode=mode,
            size=int(size),
            margin=float(margin),
            threshold=int(threshold),
            min_area=int(min_area),
            fraction=float(fraction),
        )

    def apply(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        center = (h / 2, w / 2)
        side = round(self.params["fraction"] * min(h, w))
        if self.params["mode"] in ("bbox", "center"):
            box = foreground_box(image, self.params["threshold"], self.params["min_area"])
            if box is not None:
                top, left, bottom, right = box
                if self.params["mode"] == "bbox":
                    center = ((top + bottom) / 2, (left + right) / 2)
                    extent = max(bottom - top, right - left)
                else:
                    # The farthest box edge from the image's centre sets the half-side.
                    extent = 2 * max(center[0] - top, bottom - center[0], center[1] - left, right - center[1])
                side = round(extent * (1 + 2 * self.params["margin"]))
            else:
                side = min(h, w)  # an all-black image: nothing to centre on, keep it whole
        return resize_square(square_crop(image, center, max(side, 1)), self.params["size"])
