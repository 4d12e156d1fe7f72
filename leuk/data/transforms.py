"""Random augmentation pipelines from config (albumentations), applied to the training split only."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # a library must not phone home on import

import albumentations as A
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf


class AugmentationConfigError(ValueError):
    """An augmentation entry albumentations would not honour as written."""


def build_augmentation(transforms: Sequence[Any] | None) -> A.Compose | None:
    """An ``A.Compose`` of the configured transforms, or ``None`` for an empty list.

    albumentations only warns about an argument it does not know (and then uses its default), so
    its warnings are errors here: a misspelt or removed argument stops the run at start.
    """
    if not transforms:
        return None
    built = []
    for i, spec in enumerate(transforms):
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
                raise AugmentationConfigError(f"augmentation.transforms[{i}] ({name}): {cause}") from exc
    return A.Compose(built)
