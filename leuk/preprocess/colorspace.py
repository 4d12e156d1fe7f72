"""Colour spaces for the ALDL colour-space study, stored as uint8 0..255 with fixed scalings.

Each space is scaled to [0, 1] per channel by a FIXED range (never per image or per data set, so
the same colour always gets the same code and the mapping can be inverted), then stored as uint8:

- ``rgb``: unchanged.
- ``hsv``: scikit-image's H, S and V, each already in [0, 1].
- ``lab``: scikit-image's CIE L*a*b* (D65): L in [0, 100], a and b in [-128, 127] (the 8-bit LAB
  convention; sRGB colours use a ⊂ [-87, 99], b ⊂ [-108, 95], so no colour is clipped).
- ``hed``: colour deconvolution (``skimage.color.rgb2hed``) into haematoxylin, eosin and DAB
  optical densities, each divided by its maximum over every RGB colour whose channels are all ≥ 1.
  rgb2hed takes a 0 channel as 1e-6, an optical density 2.5 times any other colour's; only such
  colours (black text, saturated pixels) are clipped to 255, for 2.5 times finer steps for the
  stained pixels. Stains are sparse even so: on the ALL images 99 % of haematoxylin values lie in
  [0, 0.13] of the range, so HED in 8 bits is coarser than the other spaces, and rgb2hed clips
  negative densities to 0: HED is not invertible.

``from_space`` inverts ``to_space`` up to 8-bit quantisation for rgb, hsv and lab: within 3 grey
levels for hsv; for lab within 3 on stained-smear colours (90 % of all colours), but up to 25 for
saturated cyans, whose R is near 0 where the sRGB curve is steep (OpenCV's 8-bit LAB shares this).
"""

from __future__ import annotations

import itertools
from typing import Literal, get_args

import numpy as np
from skimage import color

from leuk.preprocess.base import PreprocessConfigError, Step

Space = Literal["rgb", "hsv", "lab", "hed"]
SPACES: tuple[str, ...] = get_args(Space)

_LAB_LOW = np.array([0.0, -128.0, -128.0])
_LAB_SPAN = np.array([100.0, 255.0, 255.0])


def _hed_max() -> np.ndarray:
    # Each HED channel is a linear function of log R, log G and log B, clipped at 0: its extremes
    # over the RGB cube lie on the cube's corners, so 8 colours give the exact range.
    corners = np.array(list(itertools.product([1, 255], repeat=3)), dtype=np.uint8)[None]
    return color.rgb2hed(corners)[0].max(axis=0)


_HED_MAX = _hed_max()


def _check_space(space: str) -> None:
    if space not in SPACES:
        raise PreprocessConfigError(f"color_space.space must be one of {', '.join(SPACES)}; got {space!r}")


def _to_uint8(unit: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)


def to_space(image: np.ndarray, space: str) -> np.ndarray:
    """An RGB uint8 image in ``space``, each channel scaled to [0, 1] by its fixed range, as uint8."""
    _check_space(space)
    if space == "rgb":
        return image.copy()
    if space == "hsv":
        unit = color.rgb2hsv(image)
    elif space == "lab":
        unit = (color.rgb2lab(image) - _LAB_LOW) / _LAB_SPAN
    else:
        unit = color.rgb2hed(image) / _HED_MAX
    return _to_uint8(unit)


def from_space(encoded: np.ndarray, space: str) -> np.ndarray:
    """RGB uint8 back from ``to_space``'s output (HED only approximately: its negatives were clipped)."""
    _check_space(space)
    if space == "rgb":
        return encoded.copy()
    unit = encoded.astype(np.float64) / 255.0
    if space == "hsv":
        rgb = color.hsv2rgb(unit)
    elif space == "lab":
        rgb = color.lab2rgb(unit * _LAB_SPAN + _LAB_LOW)
    else:
        rgb = color.hed2rgb(unit * _HED_MAX)
    return _to_uint8(rgb)


class ColorSpace(Step):
    """Convert to ``space`` (see the module's notes for each space's fixed scaling)."""

    name = "color_space"

    def __init__(self, space: Space = "rgb") -> None:
        _check_space(space)
        super().__init__(space=space)

    def apply(self, image: np.ndarray) -> np.ndarray:
        return to_space(image, self.params["space"])
