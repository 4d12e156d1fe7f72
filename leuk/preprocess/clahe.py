"""Contrast-limited adaptive histogram equalisation (CLAHE) of the lightness only."""

from __future__ import annotations

import cv2
import numpy as np

from leuk.preprocess.base import PreprocessConfigError, Step


class Clahe(Step):
    """CLAHE on the L channel of OpenCV's LAB, so stain hues are kept while local contrast rises.

    ``clip_limit`` is OpenCV's (a multiple of the mean histogram bin); ``tile_grid`` is the number
    of tiles per side, so the tile size follows the image size.
    """

    name = "clahe"

    def __init__(self, clip_limit: float = 2.0, tile_grid: int = 8) -> None:
        if not clip_limit > 0:
            raise PreprocessConfigError(f"clahe.clip_limit must be > 0, got {clip_limit}")
        if tile_grid < 1:
            raise PreprocessConfigError(f"clahe.tile_grid must be ≥ 1, got {tile_grid}")
        super().__init__(clip_limit=float(clip_limit), tile_grid=int(tile_grid))

    def apply(self, image: np.ndarray) -> np.ndarray:
        lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
        # A new CLAHE object per call: OpenCV's keeps scratch buffers, so one shared object is not
        # thread-safe (the cache may preprocess in threads), nor picklable (nor DataLoader workers).
        grid = self.params["tile_grid"]
        clahe = cv2.createCLAHE(clipLimit=self.params["clip_limit"], tileGridSize=(grid, grid))
        lab[..., 0] = clahe.apply(np.ascontiguousarray(lab[..., 0]))
        return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
