"""``background=randomize`` / ``background=black``: the training augmentation that replaces the
background around the stained cell, with the mask the background shift of ``leuk.eval`` uses."""

from __future__ import annotations

import numpy as np
import pytest

from leuk.composition import build_datamodule
from leuk.data.transforms import AugmentationConfigError, build_augmentation, seed_augmentation
from leuk.preprocess.background import BackgroundRandomization, cell_mask
from tests.helpers import compose_config, smear


def _regions(size: int = 64, dilation: int = 4) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size // 2, xx - size // 2)
    return r <= 11, r >= 12 + dilation + 2


@pytest.mark.parametrize("fill", ["black", "color", "noise"])
def test_each_fill_keeps_the_cell_and_replaces_the_background(fill: str) -> None:
    image = smear()
    cell, background = _regions()
    out = BackgroundRandomization(fill=fill, dilation=4, p=1.0)(image=image)["image"]
    assert (out[cell] == image[cell]).all()
    changed = (out[background] != image[background]).any(axis=-1).mean()
    assert changed > 0.99, fill
    if fill == "black":
        assert (out[background] == 0).all()
    if fill == "color":
        assert len(np.unique(out[background].reshape(-1, 3), axis=0)) == 1
    if fill == "noise":
        assert out[background].std() > 50  # uniform noise over 0-255: σ ≈ 74


def test_random_fill_is_seeded_and_draws_every_kind() -> None:
    image = smear()
    pipeline = build_augmentation(
        [], background={"_target_": "leuk.preprocess.background.BackgroundRandomization", "p": 1.0}
    )
    _, background = _regions()
    kinds, draws = set(), []
    for seed in range(30):
        seed_augmentation(pipeline, seed)
        out = pipeline(image=image)["image"]
        seed_augmentation(pipeline, seed)
        assert np.array_equal(out, pipeline(image=image)["image"])
        pixels = out[background].reshape(-1, 3)
        unique = len(np.unique(pixels, axis=0))
        kinds.add("black" if (pixels == 0).all() else "color" if unique == 1 else "noise")
        draws.append(out)
    assert kinds == {"black", "color", "noise"}


def test_image_without_a_cell_and_p_zero_are_left_alone() -> None:
    blank = np.full((32, 32, 3), 240, np.uint8)
    assert not cell_mask(blank, 4).any()
    assert np.array_equal(BackgroundRandomization(fill="black", p=1.0)(image=blank)["image"], blank)
    image = smear()
    assert np.array_equal(BackgroundRandomization(fill="black", p=0.0)(image=image)["image"], image)


def test_the_background_group_runs_first_in_the_training_pipeline(tmp_path) -> None:
    cfg = compose_config(["experiment=mcb_hypernet_paper", "background=randomize"], output_dir=tmp_path)
    dm = build_datamodule(cfg)
    names = [type(t).__name__ for t in dm.train_transform.transforms]
    assert names[0] == "BackgroundRandomization" and "Rotate" in names[1:]
    plain = compose_config(["experiment=mcb_hypernet_paper"], output_dir=tmp_path / "plain")
    assert plain.augmentation.background is None
    bad = compose_config(
        ["background=black", "augmentation.background.fill=purple"], output_dir=tmp_path / "b"
    )
    with pytest.raises(AugmentationConfigError, match=r"augmentation\.background"):
        build_datamodule(bad)
