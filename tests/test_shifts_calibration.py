"""Calibration (ECE, temperature scaling) and the distribution shifts of ``leuk.eval`` on synthetic
data: each does what its documentation says, by the documented amount."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.color import rgb2hed

from leuk.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)
from leuk.shifts import SHIFTS, chosen_shifts, shifted
from tests.helpers import smear

BOUNDS = (0.05, 20.0)


def _calibrated(n: int, classes: int, rng: np.random.Generator, sharpen: float = 1.0) -> tuple:
    """Labels drawn from each row's own probabilities (a perfectly calibrated predictor), and the
    probabilities at temperature 1/``sharpen`` (sharpen > 1: over-confident)."""
    logits = rng.normal(0.0, 2.0, size=(n, classes))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(classes, p=p) for p in probs])
    return apply_temperature(probs, 1.0 / sharpen), labels


def test_ece_of_a_perfectly_calibrated_predictor_is_about_zero() -> None:
    probs, labels = _calibrated(20_000, 4, np.random.default_rng(0))
    assert expected_calibration_error(probs, labels, n_bins=15) < 0.015


def test_ece_of_a_known_miscalibration() -> None:
    # Every prediction 0.9 confident, half of them right: ECE = |0.5 - 0.9| = 0.4.
    probs = np.tile([0.9, 0.1], (10, 1))
    labels = np.array([0, 1] * 5)
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(0.4)
    bins = reliability_bins(probs, labels, n_bins=10)
    assert bins.counts.sum() == 10 and bins.counts[8] == 10  # 0.9 falls in (0.8, 0.9]


def test_temperature_scaling_lowers_the_ece_of_an_over_confident_predictor() -> None:
    rng = np.random.default_rng(1)
    val_probs, val_labels = _calibrated(4_000, 4, rng, sharpen=3.0)
    test_probs, test_labels = _calibrated(4_000, 4, rng, sharpen=3.0)
    before = expected_calibration_error(test_probs, test_labels, 15)
    t = fit_temperature(val_probs, val_labels, BOUNDS)
    scaled = apply_temperature(test_probs, t)
    after = expected_calibration_error(scaled, test_labels, 15)
    assert t == pytest.approx(3.0, rel=0.1)  # undoes the sharpening
    assert before > 0.1 and after < before / 3
    # Scaling keeps every prediction's class.
    assert (scaled.argmax(axis=1) == test_probs.argmax(axis=1)).all()


def test_brightness_multiplies_every_pixel() -> None:
    image = smear()
    out, _ = shifted(image[None], "brightness", 0.8, seed=0)
    assert np.abs(out[0].astype(float) - image * 0.8).max() <= 0.5


def test_blur_spreads_a_line_by_sigma() -> None:
    # A one-pixel vertical line: its blurred profile across is a Gaussian of the blur's σ.
    image = np.zeros((1, 41, 41, 3), np.uint8)
    image[0, :, 20] = 255
    out, _ = shifted(image, "blur", 2.0, seed=0)
    profile = out[0, 20, :, 0].astype(float)
    x = np.arange(41) - 20
    sigma = np.sqrt((profile * x**2).sum() / profile.sum())
    assert sigma == pytest.approx(2.0, abs=0.15)


def test_jpeg_error_grows_as_quality_drops() -> None:
    image = (np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3))).astype(np.uint8)
    errors = [np.abs(shifted(image, "jpeg", q, 0)[0].astype(float) - image).mean() for q in (95, 50, 10)]
    assert errors[0] < errors[1] < errors[2]


def test_scale_magnifies_about_the_centre() -> None:
    image = smear(65)
    for s in (0.8, 1.25):
        out, _ = shifted(image[None], "scale", s, seed=0)
        dark = out[0, 32, :, 1] < 128  # the purple cell's row through the centre
        assert dark.sum() == pytest.approx(25 * s, abs=2)
        assert dark[32]  # still centred


def test_hed_jitter_scales_the_stain_densities_within_the_strength() -> None:
    image = smear()
    same, _ = shifted(image[None], "hed", 0.0, seed=0)
    assert np.abs(same[0].astype(int) - image).max() <= 1
    out, _ = shifted(image[None], "hed", 0.1, seed=3)
    assert not np.array_equal(out[0], image)
    cell = (slice(30, 34), slice(30, 34))
    before, after = rgb2hed(image)[cell][..., 0].mean(), rgb2hed(out[0])[cell][..., 0].mean()
    # Haematoxylin density a·h + b with a in [0.9, 1.1] and |b| <= 0.1 (8-bit rounding aside).
    assert 0.9 * before - 0.1 - 0.01 <= after <= 1.1 * before + 0.1 + 0.01


def test_background_removal_keeps_the_cell_on_black() -> None:
    image = smear()
    out, unchanged = shifted(image[None], "background", 4, seed=0)
    assert unchanged == 0
    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 32, xx - 32)
    assert (out[0][r <= 11] == image[r <= 11]).all()  # the cell
    assert (out[0][r >= 12 + 4 + 2] == 0).all()  # the background beyond the dilation
    blank = np.full((1, 32, 32, 3), 240, np.uint8)
    _, none_found = shifted(blank, "background", 4, seed=0)
    assert none_found == 1


def test_shifts_are_seeded_and_unknown_names_refused() -> None:
    image = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    a, _ = shifted(image, "hed", 0.05, seed=7)
    b, _ = shifted(image, "hed", 0.05, seed=7)
    assert np.array_equal(a, b)
    assert set(SHIFTS) == {"hed", "blur", "jpeg", "brightness", "scale", "background"}
    with pytest.raises(ValueError, match=r"unknown \['noize'\]"):
        chosen_shifts(["noize"], {"noize": [1]})
    with pytest.raises(ValueError, match=r"shift_strengths\.<name>"):
        chosen_shifts(["blur"], {"blur": []})
    assert chosen_shifts(["blur"], {"blur": [1], "jpeg": [50]}) == {"blur": [1.0]}
