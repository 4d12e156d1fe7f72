"""Macenko stain normalisation (torchstain's NumPy implementation), fitted on training images."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from leuk.data.decode import open_rgb
from leuk.preprocess.base import EventCounter, NotFittedError, PreprocessConfigError, Step, check_image

_KEY_DECIMALS = 5
# torchstain fails (or returns NaN) where almost no pixel is stained: too few for the stain plane.
_FIT_ERRORS = (np.linalg.LinAlgError, ValueError, IndexError, FloatingPointError)


# NaN-producing operations raise (and are caught); exp() under/overflow is harmless (clipped to 0..255).
def _strict() -> np.errstate:
    return np.errstate(divide="raise", invalid="raise", over="ignore", under="ignore")


def _normalizer() -> Any:
    try:
        from torchstain.numpy.normalizers import NumpyMacenkoNormalizer
    except ImportError as exc:
        raise PreprocessConfigError(
            "preprocess macenko needs the optional dependency torchstain: pip install 'leuk[stain]'"
        ) from exc
    return NumpyMacenkoNormalizer()


def _read_rgb(path: str) -> np.ndarray:
    p = Path(path).expanduser()
    if not p.is_file():
        raise PreprocessConfigError(f"macenko.reference: no image file at '{path}'")
    # The training images' decoding (16-bit images scaled by their bit depth, not clipped).
    return np.asarray(open_rgb(p), dtype=np.uint8)


class Macenko(Step):
    """Macenko et al. (2009): each image's two stain vectors and concentrations mapped to a reference.

    The reference stain matrix and maximal concentrations come from ``reference`` (one image) or,
    by default, from ``fit``: torchstain fits one image at a time, so a seeded reservoir sample of at
    most ``fit_sample`` training images (spread over the whole split, whatever its order) is fitted
    one by one and the stain vectors averaged (then renormalised), the maximal concentrations taken
    as the median. An image torchstain cannot unmix is left unchanged and counted in ``stats``.
    """

    name = "macenko"

    def __init__(
        self,
        reference: str | None = None,
        fit_sample: int = 64,
        io: int = 240,
        alpha: float = 1.0,
        beta: float = 0.15,
    ) -> None:
        if fit_sample < 1:
            raise PreprocessConfigError(f"macenko.fit_sample must be ≥ 1, got {fit_sample}")
        if not 0 < io <= 255:
            raise PreprocessConfigError(
                f"macenko.io (transmitted light intensity) must be in (0, 255], got {io}"
            )
        super().__init__(reference=reference, fit_sample=fit_sample, io=io, alpha=alpha, beta=beta)
        self.needs_fit = reference is None
        self._he: np.ndarray | None = None
        self._max_c: np.ndarray | None = None
        self._events = EventCounter("unmixing_failed")
        self._fit_images = 0
        _normalizer()  # fail at construction, not on the first image, when torchstain is missing
        if reference is not None:
            he, max_c = self._fit_one(_read_rgb(reference))
            if he is None:
                raise PreprocessConfigError(f"macenko.reference: cannot find two stains in '{reference}'")
            self._he, self._max_c, self._fit_images = he, max_c, 1

    def _fit_one(self, image: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        norm = _normalizer()
        try:
            with _strict():
                norm.fit(image, Io=self.params["io"], alpha=self.params["alpha"], beta=self.params["beta"])
        except _FIT_ERRORS:
            return None, None
        he, max_c = np.asarray(norm.HERef, float), np.asarray(norm.maxCRef, float)
        if not (np.isfinite(he).all() and np.isfinite(max_c).all() and (max_c > 0).all()):
            return None, None
        return he, max_c

    def fit(self, images: Iterable[np.ndarray]) -> None:
        if not self.needs_fit:
            return
        k = self.params["fit_sample"]
        rng = np.random.default_rng(0)
        sample: list[np.ndarray] = []
        for i, image in enumerate(images):
            check_image(image, "macenko.fit")
            if i < k:
                sample.append(image)
            else:
                j = int(rng.integers(0, i + 1))
                if j < k:
                    sample[j] = image
        if not sample:
            raise ValueError("macenko.fit: no training images were given to compute the reference from")
        fitted = [f for f in (self._fit_one(im) for im in sample) if f[0] is not None]
        if not fitted:
            raise ValueError(
                f"macenko.fit: none of the {len(sample)} sampled training images could be unmixed"
            )
        he = np.mean([f[0] for f in fitted], axis=0)
        self._he = he / np.linalg.norm(he, axis=0, keepdims=True)
        self._max_c = np.median([f[1] for f in fitted], axis=0)
        self._fit_images = len(fitted)

    def _reference(self) -> tuple[np.ndarray, np.ndarray]:
        if self._he is None or self._max_c is None:
            raise NotFittedError(
                "macenko: call fit() with the training images first (or set preprocess macenko.reference)"
            )
        return self._he, self._max_c

    def fitted_state(self) -> dict[str, Any]:
        he, max_c = self._reference()
        return {
            "he": np.round(he, _KEY_DECIMALS).tolist(),
            "max_c": np.round(max_c, _KEY_DECIMALS).tolist(),
        }

    def apply(self, image: np.ndarray) -> np.ndarray:
        he, max_c = self._reference()
        norm = _normalizer()
        norm.HERef, norm.maxCRef = he, max_c
        try:
            with _strict():
                out, _, _ = norm.normalize(
                    image,
                    Io=self.params["io"],
                    alpha=self.params["alpha"],
                    beta=self.params["beta"],
                    stains=False,
                )
        except _FIT_ERRORS:
            self._events.add("unmixing_failed")
            return image.copy()
        return np.ascontiguousarray(out, dtype=np.uint8)

    def stats(self) -> dict[str, Any]:
        return {"fit_images": self._fit_images, **self._events.as_dict()}
