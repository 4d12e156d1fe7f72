"""An ordered, named sequence of preprocessing steps, built from ``preprocess.steps``.

``preprocess.steps`` is a mapping ``{name: step node}`` in the order the steps run (``clahe``,
``reinhard``, ``lesion`` for ALDL), so an override or a sweep names the step it changes
(``preprocess.steps.lesion.space=hsv``) and inserting a step retargets nothing. Checkpoints
written before the steps had names hold a list; its steps are named by their position.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from leuk.preprocess.base import PreprocessConfigError, PreprocessStep, check_image


def _run(steps: Sequence[PreprocessStep], image: np.ndarray) -> np.ndarray:
    # A step that asks for it (ALDL's lesion crop, crop_from=original) also gets the pipeline's
    # input: it segments what the steps before it made, and crops the original image.
    original = image
    for step in steps:
        if getattr(step, "uses_original", False):
            image = step.apply_with_original(image, original)  # type: ignore[attr-defined]
        else:
            image = step(image)
    return image


class PreprocessPipeline:
    """Steps applied in order; ``fit`` fits each step on the training images as the steps before it
    leave them, so a fitted step learns from what it will actually receive. A step with
    ``uses_original`` true gets ``apply_with_original(image, original)``, ``original`` being the
    image the pipeline was given."""

    def __init__(self, steps: Mapping[str, PreprocessStep] | Sequence[PreprocessStep] = ()) -> None:
        named = steps.items() if isinstance(steps, Mapping) else ((str(i), s) for i, s in enumerate(steps))
        self.names: list[str] = []
        self.steps: list[PreprocessStep] = []
        for name, step in named:
            if not isinstance(step, PreprocessStep):
                raise TypeError(
                    f"preprocess.steps.{name}: {type(step).__name__} lacks the step interface "
                    "(__call__, needs_fit, fit, cache_key)"
                )
            self.names.append(str(name))
            self.steps.append(step)

    def __getitem__(self, name: str) -> PreprocessStep:
        """The step named ``name`` in ``preprocess.steps``."""
        try:
            return self.steps[self.names.index(name)]
        except ValueError:
            raise KeyError(f"no preprocessing step '{name}' (the steps: {self.names})") from None

    @property
    def named_steps(self) -> dict[str, PreprocessStep]:
        return dict(zip(self.names, self.steps, strict=True))

    @property
    def needs_fit(self) -> bool:
        return any(step.needs_fit for step in self.steps)

    @property
    def is_identity(self) -> bool:
        """No step: the caller can skip the pass (and keep the plain decode cache)."""
        return not self.steps

    def __len__(self) -> int:
        return len(self.steps)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        check_image(image, "preprocess")
        return _run(self.steps, image)

    def per_lesion_step(self) -> str | None:
        """The name of the step that gives several patches per image (``per_lesion``), or None."""
        marked = [
            n for n, step in zip(self.names, self.steps, strict=True) if getattr(step, "per_lesion", False)
        ]
        if len(marked) > 1:
            keys = ", ".join(f"preprocess.steps.{n}.per_lesion" for n in marked)
            raise PreprocessConfigError(f"{keys}: only one step may set per_lesion")
        return marked[0] if marked else None

    @property
    def per_lesion(self) -> bool:
        """Whether a step gives several patches per image (ALDL's lesion crop, ``per_lesion: true``):
        the data module then serves ``patches`` rather than one image per image."""
        return self.per_lesion_step() is not None

    def patches(self, image: np.ndarray) -> list[np.ndarray]:
        """The per-lesion step's patches of ``image``, each through the steps after it (the whole
        pipeline's single output, in a list, when no step is per-lesion)."""
        check_image(image, "preprocess")
        name = self.per_lesion_step()
        if name is None:
            return [_run(self.steps, image)]
        i = self.names.index(name)
        step = self.steps[i]
        before = _run(self.steps[:i], image)
        patches = step.crops_with_original(before, image)  # type: ignore[attr-defined]
        return [_run(self.steps[i + 1 :], patch) for patch in patches]

    def fit(self, images: Iterable[np.ndarray]) -> None:
        """Fit every step that needs it, on ``images`` (the training split only, by contract).

        One pass over ``images`` per fitted step, each image run through the steps before it; an
        array or a sequence is read again for each pass, a one-shot iterator is first kept in a list.
        """
        fitted = [i for i, step in enumerate(self.steps) if step.needs_fit]
        if not fitted:
            return
        if len(fitted) > 1 and iter(images) is images:
            images = list(images)
        for i in fitted:
            self.steps[i].fit(self._through(images, self.steps[:i]))

    @staticmethod
    def _through(images: Iterable[np.ndarray], steps: Sequence[PreprocessStep]) -> Iterator[np.ndarray]:
        for image in images:
            yield _run(steps, image)

    def cache_key(self) -> str:
        """Readable key of every step's config and fitted state (``hash_key`` for a short one). A
        change of a step's code needs no version here: the decode cache fingerprints the source."""
        return "preprocess[" + "|".join(s.cache_key() for s in self.steps) + "]"

    def hash_key(self) -> str:
        """16 hex digits of ``cache_key()``, for a file name."""
        return hashlib.sha1(self.cache_key().encode()).hexdigest()[:16]

    def stats(self) -> dict[str, Any]:
        """Each step's counts as ``<step name>.<count>`` (``<name>[i].<count>`` if a name repeats)."""
        names = [getattr(s, "name", type(s).__name__) for s in self.steps]
        out: dict[str, Any] = {}
        for i, (step, name) in enumerate(zip(self.steps, names, strict=True)):
            stats = getattr(step, "stats", None)
            prefix = name if names.count(name) == 1 else f"{name}[{i}]"
            for key, value in (stats() if callable(stats) else {}).items():
                out[f"{prefix}.{key}"] = value
        return out

    def __repr__(self) -> str:
        return f"PreprocessPipeline({self.named_steps!r})"


def build_preprocess(steps: Mapping[str, Any] | Sequence[Any] | None) -> PreprocessPipeline:
    """A ``PreprocessPipeline`` of the ``_target_`` nodes of ``preprocess.steps``: a mapping
    ``{name: node}`` in run order, or the list of a checkpoint written before steps had names (its
    steps named ``0``, ``1``, ...). None or empty gives no step; a ``null`` step (an override's way
    of removing one, ``preprocess.steps.reinhard=null``) is skipped.

    A setting a step refuses (θ outside its range, an unknown colour space) is reported with the
    step's key and target.
    """
    if isinstance(steps, (DictConfig, ListConfig)):
        steps = OmegaConf.to_container(steps, resolve=True)
    if steps is None:
        items: list[tuple[str, Any]] = []
    elif isinstance(steps, Mapping):
        items = [(str(k), v) for k, v in steps.items()]
    elif isinstance(steps, Sequence) and not isinstance(steps, str):
        items = [(str(i), v) for i, v in enumerate(steps)]
    else:
        raise PreprocessConfigError(
            f"preprocess.steps: expected a mapping of step names to nodes, got {type(steps).__name__}"
        )
    built: dict[str, PreprocessStep] = {}
    for name, node in items:
        if isinstance(node, DictConfig):
            node = OmegaConf.to_container(node, resolve=True)
        if node is None:
            continue
        if not isinstance(node, dict) or "_target_" not in node:
            raise PreprocessConfigError(
                f"preprocess.steps.{name}: expected a node with a _target_, got {node!r}"
            )
        try:
            built[name] = instantiate(node)
        except Exception as exc:
            cause = exc.__cause__ or exc
            raise PreprocessConfigError(f"preprocess.steps.{name} ({node['_target_']}): {cause}") from exc
    return PreprocessPipeline(built)
