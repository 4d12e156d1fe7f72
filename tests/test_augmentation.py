"""Augmentation configs: each builds and keeps size and dtype; MobileNet_M's noise has its σ."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest

from leuk.config import config_dir
from leuk.config.schema import validate_train_config
from leuk.config.validate import ConfigError
from leuk.data.transforms import AugmentationConfigError, build_augmentation
from leuk.preprocess.noise import AdditiveGaussianNoise
from tests.helpers import compose_config

AUGMENTATION_OPTIONS = sorted(p.stem for p in (config_dir() / "augmentation").glob("*.yaml"))


def _flat(value: int = 128, size: int = 256) -> np.ndarray:
    return np.full((size, size, 3), value, np.uint8)


@pytest.mark.parametrize("option", AUGMENTATION_OPTIONS)
def test_every_augmentation_config_builds_and_keeps_size_and_dtype(option: str, tmp_path) -> None:
    cfg = compose_config([f"augmentation={option}"], output_dir=tmp_path)
    validate_train_config(cfg)
    pipeline = build_augmentation(cfg.augmentation.transforms)
    if option == "none":
        assert pipeline is None
        return
    assert isinstance(pipeline, A.Compose)
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    changed = 0
    for _ in range(10):
        out = pipeline(image=image)["image"]
        assert out.shape == image.shape and out.dtype == np.uint8
        changed += not np.array_equal(out, image)
    assert changed > 0


@pytest.mark.parametrize("sigma", [3.0, 9.0])
def test_noise_has_the_configured_sigma_on_the_0_255_scale(sigma: float) -> None:
    out = AdditiveGaussianNoise(sigma=sigma, p=1.0)(image=_flat())["image"]
    noise = out.astype(float) - 128
    assert out.dtype == np.uint8
    # Rounding adds 1/12 to the variance: σ 3 measures 3.01.
    assert abs(noise.std() - sigma) < 0.05 * sigma
    # Zero mean: within 5 standard errors (σ/√n; 0.1 at σ 9 on 256×256×3 values).
    assert abs(noise.mean()) < 5 * sigma / np.sqrt(noise.size)
    for c in range(3):
        assert abs(noise[..., c].std() - sigma) < 0.05 * sigma
    # Per channel: independent channels.
    assert abs(np.corrcoef(noise[..., 0].ravel(), noise[..., 1].ravel())[0, 1]) < 0.02
    shared = AdditiveGaussianNoise(sigma=sigma, per_channel=False, p=1.0)(image=_flat())["image"]
    assert np.array_equal(shared[..., 0], shared[..., 2])


def test_albumentations_gauss_noise_falls_short_of_sigma_3() -> None:
    """Why leuk has its own noise transform: if albumentations stops truncating, revisit it."""
    out = A.GaussNoise(std_range=(3 / 255, 3 / 255), p=1.0)(image=_flat())["image"]
    assert (out.astype(float) - 128).std() < 0.95 * 3


def test_mobilenet_m_noise_is_sigma_3_or_9_in_equal_proportions(tmp_path) -> None:
    cfg = compose_config(["augmentation=mobilenet_m"], output_dir=tmp_path)
    noise_nodes = [t for t in cfg.augmentation.transforms if t._target_ == "albumentations.OneOf"]
    assert len(noise_nodes) == 1
    children = noise_nodes[0].transforms
    assert sorted(c.sigma for c in children) == [3.0, 9.0]
    assert len({c.p for c in children}) == 1
    noise = build_augmentation(noise_nodes)
    stds = np.array([(noise(image=_flat(size=64))["image"].astype(float) - 128).std() for _ in range(300)])
    small = np.abs(stds - 3) < 0.3
    large = np.abs(stds - 9) < 0.6
    assert (small | large).all()
    assert 0.4 < small.mean() < 0.6


def test_mobilenet_m_brightness_multiplies_by_0_4_to_0_8(tmp_path) -> None:
    cfg = compose_config(["augmentation=mobilenet_m"], output_dir=tmp_path)
    nodes = [t for t in cfg.augmentation.transforms if t._target_ == "albumentations.MultiplicativeNoise"]
    brightness = build_augmentation(nodes)
    factors = []
    for _ in range(50):
        out = brightness(image=_flat(200, 32))["image"].astype(float)
        assert out.min() == out.max()  # one factor for the whole image
        factors.append(out[0, 0, 0] / 200)
    assert min(factors) >= 0.4 - 0.01 and max(factors) <= 0.8 + 0.01
    assert max(factors) - min(factors) > 0.2


def test_misspelt_or_invalid_noise_argument_fails(tmp_path) -> None:
    cfg = compose_config(
        ["augmentation=mobilenet_m", "+augmentation.transforms.0.transforms.0.sigmaa=3"], output_dir=tmp_path
    )
    with pytest.raises(ConfigError, match=r"augmentation\.transforms\[0\]\.transforms\[0\]\.sigmaa"):
        validate_train_config(cfg)
    cfg = compose_config(["augmentation=mobilenet_m", "augmentation.transforms.0.transforms.0.sigma=-3"])
    with pytest.raises(AugmentationConfigError, match=r"(?s)transforms\[0\].*sigma"):
        build_augmentation(cfg.augmentation.transforms)
