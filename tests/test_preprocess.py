"""Deterministic preprocessing: each config builds, fitted steps learn from the images given to fit
only, the ALDL lesion crop finds lesions, colour spaces invert, bad settings are named."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from leuk.cli.timing import run as timing_run
from leuk.config import config_dir
from leuk.config.schema import validate_train_config
from leuk.config.validate import ConfigError
from leuk.data.synthetic import MORPHOLOGY, render_cell
from leuk.preprocess import NotFittedError, PreprocessConfigError, PreprocessPipeline, build_preprocess
from leuk.preprocess.cell_crop import CellCenterCrop, foreground_box
from leuk.preprocess.clahe import Clahe
from leuk.preprocess.colorspace import SPACES, ColorSpace, from_space, to_space
from leuk.preprocess.lesion import LesionCrop
from leuk.preprocess.reinhard import Reinhard, lab_mean_std
from leuk.preprocess.segmentation import watershed_cells
from leuk.preprocess.timing import load_preprocess
from tests.helpers import TINY, compose_config

PREPROCESS_OPTIONS = sorted(p.stem for p in (config_dir() / "preprocess").glob("*.yaml"))


def synthetic(n_per_class: int, seed: int, size: int = 96) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [render_cell(folder, size, rng) for folder in MORPHOLOGY for _ in range(n_per_class)]


@pytest.fixture(scope="module")
def set_a() -> list[np.ndarray]:
    return synthetic(3, seed=1)


@pytest.fixture(scope="module")
def set_b() -> list[np.ndarray]:
    # A differently stained set: the same cells with the blue channel lifted and red lowered.
    shift = np.array([-40, 0, 35])
    return [np.clip(im.astype(int) + shift, 0, 255).astype(np.uint8) for im in synthetic(3, seed=2)]


# ------------------------------------------------------------------ configs
@pytest.mark.parametrize("option", PREPROCESS_OPTIONS)
def test_every_preprocess_config_composes_builds_and_runs(option: str, set_a, tmp_path) -> None:
    if option == "macenko":
        pytest.importorskip("torchstain")
    cfg = compose_config([f"preprocess={option}"], output_dir=tmp_path)
    validate_train_config(cfg)
    pipeline = build_preprocess(cfg.preprocess.steps)
    assert len(pipeline) == len(cfg.preprocess.steps)
    if pipeline.needs_fit:
        with pytest.raises(NotFittedError):
            pipeline(set_a[0])
    pipeline.fit(iter(set_a))
    out = pipeline(set_a[0])
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    again = build_preprocess(cfg.preprocess.steps)
    again.fit(iter(set_a))
    assert again.cache_key() == pipeline.cache_key()
    assert np.array_equal(again(set_a[0]), out)


def test_none_is_identity() -> None:
    assert build_preprocess(compose_config(["preprocess=none"]).preprocess.steps).is_identity
    assert build_preprocess(None).is_identity


@pytest.mark.parametrize(
    ("override", "setting"),
    [
        ("preprocess.steps.lesion.threshold=0.5", "threshold"),
        ("preprocess.steps.lesion.threshold=0.05", "threshold"),
        ("preprocess.steps.clahe.clip_limit=0", "clip_limit"),
    ],
)
def test_bad_value_fails_naming_the_setting(override: str, setting: str) -> None:
    cfg = compose_config(["preprocess=aldl", override])
    validate_train_config(cfg)  # the type is right: the range is the step's own check
    with pytest.raises(PreprocessConfigError, match=rf"preprocess\.steps\.(lesion|clahe) .*{setting}"):
        build_preprocess(cfg.preprocess.steps)


def test_unknown_colour_space_fails_naming_the_key() -> None:
    # ALDL's colour space is that of the segmentation (the step named lesion, the lesion crop).
    cfg = compose_config(["preprocess=aldl", "preprocess.steps.lesion.space=xyz"])
    with pytest.raises(ConfigError, match=r"preprocess\.steps\.lesion\.space"):
        validate_train_config(cfg)
    with pytest.raises(PreprocessConfigError, match=r"preprocess\.steps\.lesion .*space.*'xyz'"):
        build_preprocess(cfg.preprocess.steps)


def test_misspelt_or_targetless_step_fails_validation() -> None:
    cfg = compose_config(["preprocess=aldl", "+preprocess.steps.lesion.treshold=0.2"])
    with pytest.raises(ConfigError, match=r"preprocess\.steps\.lesion\.treshold.*Did you mean 'threshold'"):
        validate_train_config(cfg)
    cfg = compose_config(["preprocess=clahe", "+preprocess.steps.extra={clip_limit: 2.0}"])
    with pytest.raises(ConfigError, match=r"preprocess\.steps\.extra: expected a node with a _target_"):
        validate_train_config(cfg)


def test_steps_are_named_in_order_and_a_null_step_is_skipped() -> None:
    cfg = compose_config(["preprocess=aldl", "preprocess.steps.reinhard=null"])
    pipeline = build_preprocess(cfg.preprocess.steps)
    assert pipeline.names == ["clahe", "lesion"]
    assert [type(s).__name__ for s in pipeline.steps] == ["Clahe", "LesionCrop"]
    assert pipeline.per_lesion_step() == "lesion"
    with pytest.raises(KeyError, match="no preprocessing step 'reinhard'"):
        pipeline["reinhard"]
    # A checkpoint of main holds a list: its steps are named by position, as its keys were.
    full = OmegaConf.to_container(compose_config(["preprocess=aldl"]).preprocess.steps)
    old = build_preprocess(list(full.values()))
    assert old.names == ["0", "1", "2"] and old.per_lesion_step() == "2"
    assert [type(s) for s in old.steps] == [type(s) for s in build_preprocess(full).steps]
    # Names are not part of the cache key: the cached pixels of a run of main stay valid.
    assert build_preprocess(list(cfg.preprocess.steps.values())).cache_key() == pipeline.cache_key()
    with pytest.raises(
        PreprocessConfigError, match=r"preprocess\.steps\.a\.per_lesion, preprocess\.steps\.b"
    ):
        PreprocessPipeline(
            {"a": LesionCrop(per_lesion=True), "b": LesionCrop(per_lesion=True)}
        ).per_lesion_step()
    with pytest.raises(PreprocessConfigError, match="expected a mapping"):
        build_preprocess("clahe")


def test_colour_space_sweep_override_reaches_the_step() -> None:
    cfg = compose_config(["preprocess=aldl", "preprocess.steps.lesion.space=hsv"])
    pipeline = build_preprocess(cfg.preprocess.steps)
    assert pipeline["lesion"].params["space"] == "hsv"
    assert pipeline.names == ["clahe", "reinhard", "lesion"]


# ------------------------------------------------------------------ stain normalisation
def test_reinhard_maps_lab_statistics_to_the_reference(set_a, set_b) -> None:
    step = Reinhard()
    step.fit(set_a)
    for image in (set_a[0], set_b[5]):
        mean, std = lab_mean_std(step(image))
        np.testing.assert_allclose(mean, step.target_mean, atol=1.0)
        np.testing.assert_allclose(std, step.target_std, rtol=0.05, atol=0.3)


def test_reinhard_reference_is_from_the_fit_images_only(set_a, set_b) -> None:
    expected_mean = np.mean([lab_mean_std(im)[0] for im in set_a], axis=0)
    expected_std = np.mean([lab_mean_std(im)[1] for im in set_a], axis=0)
    step = Reinhard()
    with pytest.raises(NotFittedError):
        step.cache_key()
    step.fit(set_b)
    key_b = step.cache_key()
    step.fit(iter(set_a))  # a new fit replaces the old reference
    np.testing.assert_allclose(step.target_mean, expected_mean, rtol=1e-9)
    np.testing.assert_allclose(step.target_std, expected_std, rtol=1e-9)
    key_a = step.cache_key()
    for image in set_b:  # transforming other (validation, test) images changes nothing
        step(image)
    assert step.cache_key() == key_a != key_b
    assert step.stats() == {"fit_images": len(set_a)}


def test_reinhard_reference_image(set_a, tmp_path: Path) -> None:
    path = tmp_path / "ref.png"
    Image.fromarray(set_a[3]).save(path)
    step = build_preprocess(
        {"reinhard": {"_target_": "leuk.preprocess.reinhard.Reinhard", "reference": str(path)}}
    )
    assert not step.needs_fit
    np.testing.assert_allclose(step["reinhard"].target_mean, lab_mean_std(set_a[3])[0])
    with pytest.raises(PreprocessConfigError, match="reference"):
        Reinhard(reference=str(tmp_path / "missing.png"))


def test_macenko_reference_is_from_the_fit_images_only(set_a, set_b) -> None:
    pytest.importorskip("torchstain")
    from leuk.preprocess.macenko import Macenko

    a1, a2, b = Macenko(), Macenko(), Macenko()
    a1.fit(set_a)
    a2.fit(iter(set_a))
    b.fit(set_b)
    assert a1.cache_key() == a2.cache_key() != b.cache_key()
    out = a1(set_b[0])
    assert out.shape == set_b[0].shape and out.dtype == np.uint8

    # The normalised image moves towards set A's stain: its blue-minus-red drops.
    def blue_minus_red(im: np.ndarray) -> float:
        return float(im[..., 2].astype(float).mean() - im[..., 0].astype(float).mean())

    assert blue_minus_red(out) < blue_minus_red(set_b[0])
    assert a1.stats()["fit_images"] == len(set_a)


def test_pipeline_fits_each_step_on_what_the_steps_before_it_leave(set_a) -> None:
    pipeline = PreprocessPipeline([Clahe(clip_limit=4.0), Reinhard()])
    pipeline.fit(im for im in set_a)  # a one-shot generator, as the data module passes
    enhanced = [Clahe(clip_limit=4.0)(im) for im in set_a]
    np.testing.assert_allclose(
        pipeline.steps[1].target_mean, np.mean([lab_mean_std(im)[0] for im in enhanced], axis=0)
    )
    raw_mean = np.mean([lab_mean_std(im)[0] for im in set_a], axis=0)
    assert not np.allclose(pipeline.steps[1].target_mean, raw_mean, atol=0.1)


def test_pipeline_cache_key_follows_config_and_stats_are_named(set_a) -> None:
    key = build_preprocess(compose_config(["preprocess=clahe"]).preprocess.steps).cache_key()
    other = build_preprocess(
        compose_config(["preprocess=clahe", "preprocess.steps.clahe.tile_grid=4"]).preprocess.steps
    )
    assert other.cache_key() != key and len(other.hash_key()) == 16
    pipeline = PreprocessPipeline([LesionCrop(size=32), LesionCrop(size=32, threshold="otsu")])
    pipeline(set_a[0])
    assert set(pipeline.stats()) == {
        "lesion_crop[0].images",
        "lesion_crop[0].no_lesion",
        "lesion_crop[0].at_border",
        "lesion_crop[1].images",
        "lesion_crop[1].no_lesion",
        "lesion_crop[1].at_border",
    }


class _Invert:
    """A step written from the interface alone: no base class, no stats()."""

    needs_fit = False

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return 255 - image

    def fit(self, images) -> None:
        pass

    def cache_key(self) -> str:
        return "invert"


def test_pipeline_takes_any_step_with_the_interface(set_a) -> None:
    pipeline = PreprocessPipeline([_Invert(), Clahe()])
    assert pipeline(set_a[0]).shape == set_a[0].shape
    assert pipeline.stats() == {} and "invert|clahe" in pipeline.cache_key()
    with pytest.raises(TypeError, match=r"preprocess\.steps\.0: .*cache_key"):
        PreprocessPipeline([lambda image: image])


def test_clahe_raises_local_contrast_of_lightness_only() -> None:
    # 192 px: OpenCV floors the clip limit × tile pixels / 256, so tiny tiles would ignore it.
    image = (synthetic(1, seed=1, size=192)[0].astype(float) * 0.3 + 150).astype(np.uint8)  # washed out
    l_std = [lab_mean_std(Clahe(clip_limit=c)(image))[1][0] for c in (1.0, 3.0, 6.0)]
    assert l_std[0] < l_std[1] < l_std[2]
    assert l_std[1] > 1.5 * lab_mean_std(image)[1][0]
    # The colour (mean a and b) is kept.
    np.testing.assert_allclose(
        lab_mean_std(Clahe(clip_limit=3.0)(image))[0][1:], lab_mean_std(image)[0][1:], atol=0.5
    )


# ------------------------------------------------------------------ ALDL lesion crop
def test_lesion_crop_finds_lesions_in_rendered_cells() -> None:
    images = synthetic(10, seed=0, size=128)
    pipeline = load_preprocess("aldl")
    pipeline.fit(images[1::2])
    for image in images:
        assert pipeline(image).shape == (224, 224, 3)
    stats = pipeline.stats()
    assert stats["lesion_crop.images"] == 40
    assert stats["lesion_crop.no_lesion"] <= 2, stats  # ≥ 95 %


def test_lesion_crop_boxes_the_stained_cell_not_the_red_cells() -> None:
    # Real smears' colours: pale background, pale pink-grey red cells, one violet blast.
    yy, xx = np.mgrid[0:160, 0:200]
    image = np.full((160, 200, 3), (238, 232, 236), np.uint8)
    for cy, cx in ((30, 40), (120, 50), (40, 170), (130, 160)):
        image[np.hypot(yy - cy, xx - cx) < 16] = (205, 180, 200)
    image[np.hypot(yy - 90, xx - 120) < 22] = (120, 80, 190)
    step = LesionCrop(margin=0.0)
    top, left, bottom, right = step.find(image)
    assert abs(top - 68) <= 3 and abs(bottom - 112) <= 3 and abs(left - 98) <= 3 and abs(right - 142) <= 3
    assert step.stats()["no_lesion"] == 0
    wider = LesionCrop(margin=0.25).find(image)
    assert wider[0] < top and wider[2] > bottom


def test_interior_first_skips_a_larger_lesion_cut_by_the_border() -> None:
    yy, xx = np.mgrid[0:160, 0:200]
    image = np.full((160, 200, 3), (238, 232, 236), np.uint8)
    image[np.hypot(yy - 80, xx - 0) < 40] = (120, 80, 190)  # a large violet blob cut by the left edge
    image[np.hypot(yy - 80, xx - 130) < 20] = (120, 80, 190)  # a whole, smaller cell
    paper = LesionCrop(margin=0.0)
    assert paper.find(image)[1] == 0  # the largest lesion, at the border
    assert paper.stats()["at_border"] == 1
    inside = LesionCrop(margin=0.0, interior_first=True)
    top, left, bottom, right = inside.find(image)
    assert abs(left - 110) <= 3 and abs(right - 150) <= 3 and abs(top - 60) <= 3 and abs(bottom - 100) <= 3
    assert inside.stats()["at_border"] == 0
    # With only a border lesion, interior_first still crops it rather than giving up.
    image[np.hypot(yy - 80, xx - 130) < 20] = (238, 232, 236)
    assert inside.find(image)[1] == 0


def test_no_lesion_uses_the_whole_image_and_is_counted() -> None:
    blank = np.full((60, 80, 3), 235, np.uint8)
    blank[10:20, 10:20] = (200, 120, 130)  # a red cell: purple index below θ
    step = LesionCrop(size=40)
    out = step(blank)
    assert out.shape == (40, 40, 3)
    assert step.stats() == {"images": 1, "no_lesion": 1, "at_border": 0}
    np.testing.assert_array_equal(out, cv2.resize(blank, (40, 40), interpolation=cv2.INTER_LINEAR))


def test_lesion_crop_on_real_all_images(real_data: Path) -> None:
    classes = sorted((real_data / "all_taleqani" / "Original").iterdir())
    files = {c.name: sorted(c.glob("*.jpg")) for c in classes}
    timed = [f for c in files.values() for f in c[5::50][:10]]  # 10 per class, spread out
    train = [f for c in files.values() for f in c[30::80][:10]]

    def read(p: Path) -> np.ndarray:
        return np.asarray(Image.open(p).convert("RGB"))

    pipeline = load_preprocess("aldl")
    pipeline.fit(read(p) for p in train)
    for p in timed:
        assert pipeline(read(p)).shape == (224, 224, 3)
    stats = pipeline.stats()
    assert stats["lesion_crop.images"] == 40
    # Measured: a lesion in all 40 (and in 99 % of 400 other images at θ = 0.15).
    assert stats["lesion_crop.no_lesion"] <= 2, stats


# ------------------------------------------------------------------ colour spaces
def _all_colours(step: int = 3) -> np.ndarray:
    levels = np.unique(np.r_[np.arange(0, 256, step), 255])
    grid = np.array(list(itertools.product(levels, repeat=3)), dtype=np.uint8)
    return grid.reshape(1, -1, 3)


def test_colour_space_round_trip() -> None:
    colours = _all_colours()
    smears = np.concatenate([im.reshape(1, -1, 3) for im in synthetic(1, seed=6, size=64)], axis=1)

    def err(x: np.ndarray, space: str) -> np.ndarray:
        return np.abs(from_space(to_space(x, space), space).astype(int) - x.astype(int)).max(axis=2)

    assert err(colours, "rgb").max() == 0
    assert err(colours, "hsv").max() <= 3
    # 8-bit LAB: a step of a or b moves R by up to 25 levels for saturated cyans (R near 0, where
    # sRGB's curve is steep); stained-smear colours stay within 3.
    lab = err(colours, "lab")
    assert np.percentile(lab, 90) <= 3 and lab.mean() <= 1.6
    assert err(smears, "lab").max() <= 3


def test_colour_space_scaling_is_fixed_per_colour() -> None:
    colours = _all_colours(step=17)
    for space in SPACES:
        whole = to_space(colours, space)
        alone = np.concatenate(
            [to_space(colours[:, i : i + 1], space) for i in range(0, colours.shape[1], 97)], 1
        )
        np.testing.assert_array_equal(whole[:, ::97], alone)


def test_hed_range_covers_every_colour() -> None:
    from skimage.color import rgb2hed

    from leuk.preprocess.colorspace import _HED_MAX

    colours = np.random.default_rng(0).integers(1, 256, (1, 200_000, 3)).astype(np.uint8)
    assert (rgb2hed(colours).max(axis=(0, 1)) <= _HED_MAX + 1e-9).all()
    encoded = to_space(_all_colours(step=254), "hed")
    assert encoded.max(axis=(0, 1)).tolist() == [255, 255, 255]


def test_colour_space_step_output() -> None:
    image = synthetic(1, seed=4, size=48)[0]
    assert np.array_equal(ColorSpace("rgb")(image), image)
    hsv = ColorSpace("hsv")(image)
    assert hsv.dtype == np.uint8 and hsv.shape == image.shape and not np.array_equal(hsv, image)
    with pytest.raises(PreprocessConfigError, match=r"color_space\.space"):
        ColorSpace("xyz")  # type: ignore[arg-type]


# ------------------------------------------------------------------ watershed
def test_watershed_separates_two_touching_cells() -> None:
    yy, xx = np.mgrid[0:120, 0:160]
    image = np.full((120, 160, 3), 235, np.uint8)
    for cy, cx in ((60, 54), (60, 106)):  # radius 28, centres 52 apart: a neck 21 px high
        image[np.hypot(yy - cy, xx - cx) < 28] = (110, 70, 170)
    result = watershed_cells(image)
    assert result.n_cells == 2
    assert result.labels[60, 54] != result.labels[60, 106] and result.labels[60, 54] > 0
    assert result.labels[5, 5] == 0
    red = np.all(result.overlay == (255, 0, 0), axis=2)
    assert red[60, 78:83].any()  # the boundary between the two cells, at the neck


# ------------------------------------------------------------------ C-NMC crop
def test_cell_crop_keeps_an_off_centre_cell_whole() -> None:
    image = np.zeros((450, 450, 3), np.uint8)
    image[60:300, 200:440] = (120, 60, 140)  # reaches near the right edge
    out = CellCenterCrop(size=224, margin=0.05)(image)
    assert out.shape == (224, 224, 3)
    box = foreground_box(out, 10, 1)
    assert box is not None
    top, left, bottom, right = box
    assert top > 0 and left > 0 and bottom < 224 and right < 224  # nothing cut, a black rim left
    assert bottom - top > 190  # and enlarged to fill the crop
    fixed = CellCenterCrop(mode="fraction", fraction=0.6, size=224)(image)
    assert foreground_box(fixed, 10, 1)[3] == 224  # the fixed crop cuts it


def test_cell_crop_on_real_cnmc_sample(real_data: Path) -> None:
    files = sorted((real_data / "cnmc_sample").rglob("*.bmp"))
    assert len(files) >= 40
    step = CellCenterCrop()
    for p in files:
        out = step(np.asarray(Image.open(p).convert("RGB")))
        box = foreground_box(out, 10, 64)
        assert out.shape == (224, 224, 3) and box is not None
        assert min(box[:2]) > 0 and max(box[2:]) < 224, p.name


# ------------------------------------------------------------------ timing helper
def test_timing_helper(tmp_path: Path) -> None:
    for i, image in enumerate(synthetic(2, seed=5, size=64)):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    args = ["--preprocess", "aldl", "--n", "4", "--fit", "4", "--set", "steps.lesion.size=32"]
    result = timing_run(["preprocess", *args, "--images", str(tmp_path / "*.png")])
    assert result.n_images == 4 and result.n_fit_images == 4 and result.preprocess_ms_per_image > 0
    assert result.stats["lesion_crop.images"] == 4


def test_training_run_preprocesses_and_keeps_its_steps(tmp_path: Path) -> None:
    """A run with a fitted step: the cached pass keeps its stats, and the checkpoint alone (no
    Hydra config beside it) gives prediction the same fitted pipeline."""
    from leuk.checkpoints import load_trained
    from leuk.predictions import load_split, preprocess_for_run
    from leuk.train import train

    overrides = [*TINY, "preprocess=reinhard", "trainer.max_epochs=1", "logger=none", "data.cache=disk"]
    first = train(compose_config(overrides, output_dir=tmp_path / "a"))
    again = train(compose_config(overrides, output_dir=tmp_path / "b"))  # from the disk cache
    assert "reinhard" in first["preprocess"]
    assert first["preprocess_stats"] and again["preprocess_stats"] == first["preprocess_stats"]
    assert again["preprocess"] == first["preprocess"]

    trained = load_trained(first["best_checkpoint"])
    assert trained.preprocess_steps["reinhard"]["_target_"].endswith("Reinhard")
    pipeline = preprocess_for_run(tmp_path / "a", load_split(tmp_path / "a"), trained.preprocess_steps)
    assert pipeline is not None and pipeline.cache_key() == first["preprocess"]
