"""``stain=hed``: the training augmentation that jitters the stain colours with the same HED
jitter as the ``hed`` shift of ``leuk.eval``."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.color import rgb2hed

from leuk.data.transforms import AugmentationConfigError, build_augmentation
from leuk.preprocess.stain import HEDJitter, hed_jitter
from leuk.shifts import SHIFTS, shifted
from tests.helpers import compose_config, smear

HED = {"_target_": "leuk.preprocess.stain.HEDJitter", "strength": 0.05, "p": 1.0}


@pytest.mark.parametrize("strength", [0.02, 0.1])
def test_the_jitter_moves_the_stain_density_within_its_strength(strength: float) -> None:
    image = smear()
    out = HEDJitter(strength=strength, p=1.0)(image=image)["image"]
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert not np.array_equal(out, image)
    cell = (slice(30, 34), slice(30, 34))
    before, after = rgb2hed(image)[cell][..., 0].mean(), rgb2hed(out)[cell][..., 0].mean()
    # Haematoxylin density a·h + b with |a − 1| <= s and |b| <= s (8-bit rounding aside).
    assert (1 - strength) * before - strength - 0.01 <= after <= (1 + strength) * before + strength + 0.01
    assert np.array_equal(HEDJitter(strength=strength, p=0.0)(image=image)["image"], image)


def test_the_training_jitter_is_the_eval_shift() -> None:
    # Same function: a strength means the same in training and in the hed shift.
    image = smear()
    out, _ = shifted(image[None], "hed", 0.05, seed=3)
    assert out[0].shape == image.shape
    assert (out[0] != image).any()
    assert SHIFTS["hed"] is hed_jitter


def test_the_pipeline_is_seeded_and_draws_a_new_jitter_per_call() -> None:
    image = smear()
    a = build_augmentation([], seed=7, stain=HED)
    b = build_augmentation([], seed=7, stain=HED)
    first = [a(image=image)["image"] for _ in range(3)]
    again = [b(image=image)["image"] for _ in range(3)]
    assert all((x == y).all() for x, y in zip(first, again, strict=True))
    assert not (first[0] == first[1]).all()


def test_the_stain_group_runs_after_the_background_and_before_the_transforms(tmp_path) -> None:
    cfg = compose_config(
        ["experiment=mcb_hypernet_paper", "stain=hed", "background=black"], output_dir=tmp_path
    )
    pipeline = build_augmentation(
        cfg.augmentation.transforms, background=cfg.augmentation.background, stain=cfg.augmentation.stain
    )
    names = [type(t).__name__ for t in pipeline.transforms]
    assert names[:2] == ["BackgroundRandomization", "HEDJitter"]
    assert len(names) == 2 + len(cfg.augmentation.transforms)
    assert compose_config([], output_dir=tmp_path / "none").augmentation.stain is None


def test_a_bad_strength_names_its_key(tmp_path) -> None:
    cfg = compose_config(["stain=hed", "augmentation.stain.strength=1.5"], output_dir=tmp_path)
    with pytest.raises(AugmentationConfigError, match=r"augmentation\.stain"):
        build_augmentation([], stain=cfg.augmentation.stain)
