"""ALDL's per-lesion protocol (§4.2.6, Eqs. 9-10): one 224 px patch per detected lesion, the
network trained and tested on patches, the split made on images before they are expanded."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from leuk.cli.eval import evaluate
from leuk.composition import build_datamodule
from leuk.data.decode import decode_file
from leuk.data.prediction import PredictionDataModule
from leuk.preprocess.base import PreprocessConfigError
from leuk.preprocess.lesion import LesionCrop
from leuk.run_summary import image_metrics_on_test
from leuk.train import train
from tests.helpers import compose_config

CLASSES = ("Benign", "Early", "Pre", "Pro")
PER_CLASS = 6
SIZE = 32
SPLIT_COLUMNS = ["path", "label", "class_name", "split", "group", "subject", "variant"]


def _smear(n_blobs: int, seed: int, side: int = 96) -> np.ndarray:
    """A light, slightly noisy background with ``n_blobs`` dark purple nuclei, apart from each other."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side]
    noise = rng.integers(-4, 5, (side, side, 3))
    image = np.clip(np.array((236, 230, 234)) + noise, 0, 255).astype(np.uint8)
    centres: list[tuple[int, int]] = []
    while len(centres) < n_blobs:
        c = (int(rng.integers(14, side - 14)), int(rng.integers(14, side - 14)))
        if all(np.hypot(c[0] - a, c[1] - b) > 30 for a, b in centres):
            centres.append(c)
    for j, (cy, cx) in enumerate(centres):
        image[np.hypot(yy - cy, xx - cx) < 9 + j] = (120 + 5 * j, 70, 190)
    return image


@pytest.fixture(scope="module")
def smears(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ALL-like tree (Original/<class>/*.png) of 24 images with 2 or 3 nuclei each."""
    root = tmp_path_factory.mktemp("smears")
    for c, name in enumerate(CLASSES):
        folder = root / "Original" / name
        folder.mkdir(parents=True)
        for i in range(PER_CLASS):
            Image.fromarray(_smear(2 + (i + c) % 2, seed=100 * c + i)).save(folder / f"{name}_{i}.png")
    return root


def _overrides(root: Path, *extra: str) -> list[str]:
    return [
        "experiment=aldl_paper",
        f"data.root={root}",
        f"data.image_size={SIZE}",
        f"preprocess.steps.lesion.size={SIZE}",
        "data.cache=memory",
        "data.num_workers=0",
        "data.persistent_workers=false",
        *extra,
    ]


def _datamodule(root: Path, tmp_path: Path, *extra: str):
    dm = build_datamodule(compose_config(_overrides(root, *extra), output_dir=tmp_path))
    dm.setup()
    return dm


# ------------------------------------------------------------------ the step
def test_crops_every_lesion_up_to_the_cap() -> None:
    image = _smear(3, seed=1)
    assert len(LesionCrop(margin=0.0, size=SIZE, per_lesion=True).crops(image)) == 3
    capped = LesionCrop(margin=0.0, size=SIZE, per_lesion=True, max_lesions=2).crops(image)
    assert len(capped) == 2
    with pytest.raises(PreprocessConfigError, match="max_lesions"):
        LesionCrop(per_lesion=True, max_lesions=0)


def test_single_crop_cache_key_is_unchanged() -> None:
    # Existing decoded-image caches stay valid: the key of a single-crop step names no new key.
    assert "per_lesion" not in LesionCrop().cache_key()
    assert "max_lesions" not in LesionCrop().cache_key()
    assert "per_lesion" in LesionCrop(per_lesion=True).cache_key()


# ------------------------------------------------------------------ the data module
def test_paper_experiment_expands_images_into_lesion_patches(smears: Path, tmp_path: Path) -> None:
    dm = _datamodule(smears, tmp_path)
    n_images = len(dm.records)
    owner = dm.patch_owner
    assert len(owner) > n_images  # several patches per image
    counts = np.bincount(owner, minlength=n_images)
    assert set(counts.tolist()) <= {2, 3} and (counts == 3).any()
    served = []
    for split in ("train", "val", "test"):
        ds = dm.dataset(split)
        rows = np.asarray(ds.indices)
        served.append(rows)
        # Every patch carries its image's split and label.
        assert (dm.assignment[owner[rows]] == split).all()
        for i in range(len(ds)):
            assert ds[i][1] == dm.labels[owner[rows[i]]]
        # An image's patches are all served with it.
        images = np.unique(owner[rows])
        assert len(rows) == counts[images].sum()
        assert dm.summary["n_patches"][split] == len(rows)
    assert sorted(np.concatenate(served).tolist()) == list(range(len(owner)))
    # One group, one split: patches of an image (and of its near-duplicates) never straddle.
    groups = pd.Series(dm.grouping.groups)
    assert (pd.Series(dm.assignment).groupby(groups).nunique() == 1).all()
    # The patches are the step's crops of each image, decoded at the run's size.
    i = int(owner[0])
    expected = [
        np.asarray(Image.fromarray(c).resize((SIZE, SIZE), Image.Resampling.BILINEAR, reducing_gap=None))
        for c in dm.preprocess.patches(np.asarray(Image.open(dm.records[i].path).convert("RGB")))
    ]
    np.testing.assert_array_equal(np.asarray(dm.patches)[owner == i], np.stack(expected))
    frame = dm.split_frame()
    assert len(frame) == n_images
    assert frame["n_patches"].tolist() == counts.tolist()


def test_training_balance_acts_on_patches(smears: Path, tmp_path: Path) -> None:
    dm = _datamodule(smears, tmp_path, "data.balance=oversample")
    train_rows = np.flatnonzero(dm.assignment[dm.patch_owner] == "train")
    labels = dm.labels[dm.patch_owner]
    balanced = labels[dm.train_indices]
    per_class = np.bincount(balanced)
    assert (per_class == per_class.max()).all()  # every class as many patches as the largest
    assert per_class.max() == np.bincount(labels[train_rows]).max()
    assert set(dm.train_indices.tolist()) == set(train_rows.tolist())


def test_patches_cached_on_disk(smears: Path, tmp_path: Path) -> None:
    extra = ("data.cache=disk", f"data.cache_dir={tmp_path / 'cache'}")
    first = _datamodule(smears, tmp_path, *extra)
    second = _datamodule(smears, tmp_path, *extra)
    assert not first.summary["patches_cache_hit"]
    assert second.summary["patches_cache_hit"]
    np.testing.assert_array_equal(first.patch_owner, second.patch_owner)
    np.testing.assert_array_equal(np.asarray(first.patches), np.asarray(second.patches))


def test_single_crop_path_is_unchanged(smears: Path, tmp_path: Path) -> None:
    dm = _datamodule(smears, tmp_path, "preprocess.steps.lesion.per_lesion=false")
    n_images = len(dm.records)
    assert dm.patch_owner is None
    assert sum(len(dm.dataset(s)) for s in ("train", "val", "test")) == n_images
    assert list(dm.split_frame().columns) == SPLIT_COLUMNS
    assert "n_patches" not in dm.summary
    for i in range(n_images):
        expected = decode_file(dm.records[i].path, SIZE, dm.preprocess)
        np.testing.assert_array_equal(np.asarray(dm.decoded.images[i]), expected)


def test_per_lesion_refuses_hsv_copy(smears: Path, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="per_lesion"):
        _datamodule(smears, tmp_path, "data.balance=hsv_copy", "data.hsv_copy_class=Benign")


# ------------------------------------------------------------------ a run
def test_paper_experiment_runs_on_patches(smears: Path, tmp_path: Path) -> None:
    cfg = compose_config(
        _overrides(
            smears,
            "debug=fdr",
            "data.batch_size=64",  # fast_dev_run tests one batch: all the test patches
            "model.pretrained=false",
            "model.allow_random_frozen=true",
        ),
        output_dir=tmp_path / "run",
    )
    metrics = train(cfg)
    frame = pd.read_csv(tmp_path / "run" / "split.csv")
    test = frame[frame["split"] == "test"]
    assert metrics["n_test_images"] == len(test)
    assert metrics["n_test"] == int(test["n_patches"].sum()) > len(test)
    assert metrics["n_patches"]["test"] == metrics["n_test"]
    assert 0.0 <= metrics["test_image/accuracy"] <= 1.0


def test_eval_scores_images_as_the_training_run_does(smears: Path, tmp_path: Path) -> None:
    """leuk.eval on an ALDL run: every lesion patch of a test image is predicted, the image's
    prediction is the mean of its patches' probabilities, so the evaluation reproduces the
    training run's per-image (test_image/*) and per-patch (test/*) figures."""
    run = tmp_path / "run"
    train(
        compose_config(
            _overrides(
                smears,
                "trainer.max_epochs=1",
                "logger=none",
                "trainer.enable_progress_bar=false",
                "model.pretrained=false",
                "model.allow_random_frozen=true",
            ),
            output_dir=run,
        )
    )
    trained = json.loads((run / "metrics.json").read_text())
    overrides = [
        f"ckpt_path={trained['best_checkpoint']}",
        "noise_sigmas=[0]",
        "latency=false",
        "shifts=[blur]",
        "shift_strengths.blur=[1.0]",
    ]
    out = tmp_path / "eval"
    result = evaluate(compose_config(overrides, output_dir=out, config_name="eval"))
    assert result["n_images"] == trained["n_test_images"]
    assert result["n_patches"] == trained["n_test"] > trained["n_test_images"]
    for key, value in trained.items():
        if key.startswith("test_image/") and key.count("/") == 1:
            image_key = "test/" + key.split("/", 1)[1]
            assert result["metrics"][image_key] == pytest.approx(value, abs=1e-5), key
    for key in ("accuracy", "f1", "mcc", "auroc"):
        assert result["metrics"][f"test_patch/{key}"] == pytest.approx(trained[f"test/{key}"], abs=1e-5)
    assert result["noise"][0]["test/accuracy"] == pytest.approx(trained["test_image/accuracy"], abs=1e-6)
    assert len(pd.read_csv(out / "predictions.csv")) == trained["n_test_images"]
    assert 0 <= result["shift"][0]["n_wrong"] <= trained["n_test_images"]


class _TwoPatches:
    """A per-lesion preprocessing that gives two patches (the image and its mirror), and fails
    on an image whose top-left pixel is pure red."""

    per_lesion = True

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.patches(image)[0]

    def patches(self, image: np.ndarray) -> list[np.ndarray]:
        if tuple(image[0, 0]) == (255, 0, 0):
            raise ValueError("no stain found")
        return [image, np.ascontiguousarray(image[:, ::-1])]


def test_prediction_data_lists_images_whose_patches_fail(tmp_path: Path) -> None:
    paths = []
    for i, colour in enumerate([(10, 20, 30), (255, 0, 0), (40, 50, 60)]):
        image = np.full((12, 12, 3), 90, np.uint8)
        image[0, 0] = colour
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(image).save(paths[-1])
    (tmp_path / "broken.png").write_bytes(b"not a png")
    paths.append(str(tmp_path / "broken.png"))
    data = PredictionDataModule(paths, 8, labels=[0, 1, 0, 1], preprocess=_TwoPatches())
    data.setup()
    assert [p for p, _ in data.bad] == [paths[1], paths[3]]
    assert "no stain found" in dict(data.bad)[paths[1]]
    assert data.paths == [paths[0], paths[2]] and data.labels.tolist() == [0, 0]
    assert data.owner.tolist() == [0, 0, 1, 1] and len(data.images) == 4
    assert data.pictures.shape == (2, 8, 8, 3)


def test_image_metrics_average_each_images_patches() -> None:
    # Image 0: two patches, mean probability for class 1 (one patch says 0 with 0.6, the other 1
    # with 0.9); image 1: one patch for class 0. Rows 3-5 are another split's patches.
    owner = np.array([0, 0, 1, 2, 2, 2])
    datamodule = SimpleNamespace(
        patch_owner=owner,
        labels=np.array([1, 0, 1]),
        class_names=["a", "b"],
        dataset=lambda split: _Sized(np.array([0, 1, 2])),
    )
    probs = np.array([[0.6, 0.4], [0.1, 0.9], [0.8, 0.2]], np.float32)
    outputs = {"probs": probs, "targets": np.array([1, 1, 0]), "indices": np.arange(3)}
    metrics = image_metrics_on_test(outputs, datamodule)
    assert metrics["test_image/accuracy"] == 1.0  # patch-wise it would be 2/3
    assert image_metrics_on_test(outputs, SimpleNamespace(patch_owner=None)) == {}


class _Sized:
    def __init__(self, indices: np.ndarray) -> None:
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)
