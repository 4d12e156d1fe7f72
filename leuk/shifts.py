"""Distribution shifts of a test set: what a model meets on another microscope, stain batch or
scanner, and on segmented releases of blood-smear data sets (the cell on black).

Each shift is a function ``(image, strength, rng) -> image`` on HWC uint8 RGB images at the model's
input size (after the run's preprocessing), so a strength means the same for every model:

- ``hed``: stain variation (Tellez et al., 2018): the image's haematoxylin, eosin and DAB optical
  densities each scaled by a factor drawn from U(1 − s, 1 + s) and shifted by one from U(−s, s),
  per image (``leuk.preprocess.stain``; the ``stain=hed`` training augmentation is the same).
- ``blur``: Gaussian blur of standard deviation s pixels (defocus).
- ``jpeg``: JPEG compression at quality s (100 = almost lossless).
- ``brightness``: every pixel multiplied by s, clipped to 0-255 (illumination).
- ``scale``: magnification s about the centre (s > 1 zooms in and crops; s < 1 zooms out and
  fills the border by reflection), at the same output size.
- ``background``: everything outside the stained cell set to black. The cell is the lesion mask
  (``leuk.preprocess.lesion``, the ALDL paper's purple-index rule at its defaults) dilated by s
  pixels, which takes in the cytoplasm around the nucleus. An image where no cell is found is kept
  as it is and counted (``n_unmasked``).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence

import cv2
import numpy as np
from PIL import Image

from leuk.preprocess.background import cell_mask, fill_background
from leuk.preprocess.stain import hed_jitter
from leuk.utils.errors import UserConfigError

Shift = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


class ShiftConfigError(UserConfigError, ValueError):
    """``shifts`` / ``shift_strengths`` of ``conf/eval.yaml`` that cannot run."""


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def gaussian_blur(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    if strength <= 0:
        return image.copy()
    return cv2.GaussianBlur(image, (0, 0), sigmaX=float(strength), borderType=cv2.BORDER_REFLECT_101)


def jpeg(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=int(strength))
    return np.asarray(Image.open(buffer).convert("RGB"))


def brightness(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    return _to_uint8(image.astype(np.float32) * float(strength))


def scale(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[:2]
    s = float(strength)
    # The affine map x' = s (x − c) + c about the centre c, sampled back at the same size.
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    matrix = np.array([[s, 0.0, (1 - s) * cx], [0.0, s, (1 - s) * cy]], dtype=np.float64)
    return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def remove_background(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    mask = cell_mask(image, strength)
    if not mask.any():
        return image.copy()
    return fill_background(image, mask, "black", rng)


SHIFTS: dict[str, Shift] = {
    "hed": hed_jitter,
    "blur": gaussian_blur,
    "jpeg": jpeg,
    "brightness": brightness,
    "scale": scale,
    "background": remove_background,
}


def chosen_shifts(names: Sequence[str], strengths: Mapping[str, Sequence[float]]) -> dict[str, list[float]]:
    """The strengths of each shift in ``names``; an unknown name, or one without strengths, stops an
    evaluation at start naming the key."""
    unknown = sorted(set(names) - set(SHIFTS))
    if unknown:
        raise ShiftConfigError(f"shifts: unknown {unknown}; the shifts are {sorted(SHIFTS)}")
    missing = [n for n in names if not strengths.get(n)]
    if missing:
        raise ShiftConfigError(f"shifts: no strengths for {missing}; set shift_strengths.<name>=[...]")
    return {n: [float(v) for v in strengths[n]] for n in names}


def shifted(images: np.ndarray, name: str, strength: float, seed: int) -> tuple[np.ndarray, int]:
    """``images`` (N×H×W×3 uint8) under shift ``name`` at ``strength``, and how many images it left
    unchanged because it found nothing to act on (the background shift's images without a cell).

    The generator starts from ``seed`` for every (shift, strength), so two strengths differ by the
    strength, not by the draw."""
    shift = SHIFTS[name]
    rng = np.random.default_rng(seed)
    out = np.empty_like(images)
    unmasked = 0
    for i, image in enumerate(images):
        out[i] = shift(image, strength, rng)
        if name == "background" and np.array_equal(out[i], image):
            unmasked += 1
    return out, unmasked
