"""The contract of a deterministic preprocessing step, and a base class for the common cases.

A step turns one HWC uint8 RGB image into one HWC uint8 3-channel image (it may change the size).
It runs once per image, before the decoded images are cached, so its output must depend only on
the image and on the step's configuration and fitted state, which ``cache_key`` spells out.
"""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

import numpy as np

from leuk.utils.errors import UserConfigError


class PreprocessConfigError(UserConfigError, ValueError):
    """A preprocessing setting that cannot work, named by its config key."""


class NotFittedError(RuntimeError):
    """A step whose parameters come from the training split was used before ``fit``."""


@runtime_checkable
class PreprocessStep(Protocol):
    """What ``PreprocessPipeline`` (and the data module's cache) needs of a step.

    Optional: ``stats() -> dict`` of counts for the run's log and metrics.json (``Step`` has one).
    """

    needs_fit: bool

    def __call__(self, image: np.ndarray) -> np.ndarray: ...

    def fit(self, images: Iterable[np.ndarray]) -> None: ...

    def cache_key(self) -> str: ...


def check_image(image: np.ndarray, who: str) -> None:
    """Refuse anything but HWC uint8 with 3 channels: a float or gray image would be cached wrongly."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"{who}: expected an HWC uint8 image with 3 channels, got shape {shape}, {dtype}")


class Step(ABC):
    """A step whose behaviour is fixed by its constructor arguments (no fit, no stats).

    Subclasses set ``name`` (the config option's name, used in cache keys and stats) and
    ``self.params`` (the constructor arguments, JSON-serialisable) and implement ``apply``.
    """

    name: str = "step"
    needs_fit: bool = False

    def __init__(self, **params: Any) -> None:
        self.params = params

    @abstractmethod
    def apply(self, image: np.ndarray) -> np.ndarray:
        """The step's work on an image already checked to be HWC uint8 RGB."""

    def __call__(self, image: np.ndarray) -> np.ndarray:
        check_image(image, f"preprocess step '{self.name}'")
        return self.apply(image)

    def fit(self, images: Iterable[np.ndarray]) -> None:  # noqa: B027 (a default, not a hook to fill)
        """Nothing to learn; the images are not even read (a generator is left unconsumed)."""

    def fitted_state(self) -> dict[str, Any]:
        return {}

    def cache_key(self) -> str:
        state = {"params": self.params, **self.fitted_state()}
        return f"{self.name}{json.dumps(state, sort_keys=True, separators=(',', ':'))}"

    def stats(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


class EventCounter:
    """Thread-safe named counts for ``stats()`` (the cache may run a step in several threads)."""

    def __init__(self, *names: str) -> None:
        self._counts = dict.fromkeys(names, 0)
        self._lock = threading.Lock()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + n

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def __getstate__(self) -> dict[str, int]:
        return self.as_dict()  # a lock cannot be pickled (DataLoader workers started by spawn)

    def __setstate__(self, counts: dict[str, int]) -> None:
        self._counts = dict(counts)
        self._lock = threading.Lock()
