"""Random augmentation pipelines from config (albumentations), applied to the training split only.

albumentations 2.0.8 draws from generators of its own, untouched by global seeds. Its own seeding,
``A.Compose(seed=s)`` or ``set_random_seed(s)``, gives every transform a fresh generator seeded
with the same ``s``: two transforms with the same ``p`` then draw the same numbers and fire together
(HorizontalFlip and VerticalFlip at p=0.5 flip both or neither). leuk instead hands one generator
pair to the whole pipeline (``seed_augmentation``), so the transforms draw one after another from a
single stream; the training dataset reseeds it per sample (``leuk.data.dataset``).
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # a library must not phone home on import

import albumentations as A
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from leuk.utils.errors import UserConfigError


class AugmentationConfigError(UserConfigError, ValueError):
    """An augmentation entry albumentations would not honour as written."""


def seed_augmentation(pipeline: Any, seed: int | None) -> None:
    """Point every transform of ``pipeline`` at one numpy and one Python generator seeded by
    ``seed`` (``None``: fresh entropy). A pipeline without albumentations' ``set_random_state`` is
    left as it is."""
    set_state = getattr(pipeline, "set_random_state", None)
    if callable(set_state):
        set_state(np.random.default_rng(seed), random.Random(seed))


def build_augmentation(
    transforms: Sequence[Any] | None, seed: int | None = None, background: Any = None, stain: Any = None
) -> A.Compose | None:
    """An ``A.Compose`` of the configured transforms, or ``None`` for an empty list.

    ``background`` (``augmentation.background``, the ``background`` config group): a transform
    that replaces the background around the cell, run first, before any geometric or colour change
    of the image the cell mask is found on. ``stain`` (``augmentation.stain``, the ``stain`` group):
    a stain-colour jitter, run next, after the cell mask has been found on the original colours.

    albumentations only warns about an argument it does not know (and then uses its default), so
    its warnings are errors here: a misspelt or removed argument stops the run at start.

    ``seed`` starts the pipeline's one random stream (``seed_augmentation``): calls made on the
    pipeline directly (``leuk.preview``) repeat with it. Training does not depend on it, as the
    training dataset reseeds the pipeline for every sample from the run seed, epoch and position.
    """
    leading = [("augmentation.background", background), ("augmentation.stain", stain)]
    specs = [(key, spec) for key, spec in leading if spec is not None]
    specs += [(f"augmentation.transforms[{i}]", spec) for i, spec in enumerate(transforms or [])]
    if not specs:
        return None
    built = []
    for key, spec in specs:
        spec_dict = (
            OmegaConf.to_container(spec, resolve=True) if isinstance(spec, (DictConfig, ListConfig)) else spec
        )
        name = spec_dict.get("_target_", "?") if isinstance(spec_dict, dict) else "?"
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                built.append(instantiate(spec_dict))
            except Exception as exc:
                cause = exc.__cause__ or exc
                raise AugmentationConfigError(f"{key} ({name}): {cause}") from exc
    pipeline = A.Compose(built)
    seed_augmentation(pipeline, seed)
    return pipeline
