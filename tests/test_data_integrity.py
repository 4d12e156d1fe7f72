"""Data that must never be lost or altered silently: 16-bit images, folders mapped to no class,
broken links, one file under two labels, blank images, and errors that name ``data.root``."""

from __future__ import annotations

import logging
import os
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from leuk.cli.eval import _from_split
from leuk.config.schema import validate_train_config
from leuk.data.cnmc import CNMCSource
from leuk.data.datamodule import LeukDataModule
from leuk.data.decode import BadImagesError, decode_all, decode_file, open_rgb
from leuk.data.grouping import group_images
from leuk.data.inspect import inspect_data
from leuk.data.sources import DataError, FolderSource, scan_class_folders
from leuk.data.splits import RatioSplit
from leuk.predictions import load_split, preprocess_for_run
from leuk.run_summary import data_summary
from tests.helpers import ALL_CLASSES, compose_config
from tests.test_data import make_dm, synthetic_folder

GRADIENT = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)


def _inspect(root: Path, tmp_path: Path, data: str = "folder") -> dict:
    cfg = compose_config([f"data={data}", f"data.root={root}"], output_dir=tmp_path, config_name="inspect")
    return inspect_data(instantiate(cfg.data))


def _mapped_dm(root: Path, **kwargs) -> LeukDataModule:
    """The ALL class mapping (folders beside the four are mapped to no class)."""
    defaults = dict(image_size=32, batch_size=4, num_workers=0, cache="memory")
    defaults.update(kwargs)
    return LeukDataModule(
        partial(FolderSource, classes=ALL_CLASSES), RatioSplit(0.6, 0.2, 0.2), root=str(root), **defaults
    )


# --------------------------------------------------------------------------- 16-bit images
@pytest.mark.parametrize(("fmt", "array"), [("png", GRADIENT), ("tiff", GRADIENT.astype(">u2"))])
def test_16_bit_images_are_scaled_by_their_bit_depth(tmp_path: Path, fmt: str, array: np.ndarray) -> None:
    path = tmp_path / f"grad16.{fmt}"
    Image.fromarray(array).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I;16")  # what microscope cameras write: Pillow's 16-bit mode
    expected = np.round(GRADIENT.astype(np.float64) / 257).astype(np.uint8)
    for pixels in (
        np.asarray(open_rgb(path)),
        decode_file(str(path), 64),
        decode_all([str(path)], 64, mode="memory").images[0],
    ):
        assert pixels.shape == (64, 64, 3) and not (pixels == 255).all()
        np.testing.assert_array_equal(pixels[..., 0], expected)
        np.testing.assert_array_equal(pixels[..., 2], expected)


def test_float_images_are_listed_as_unreadable_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "float.tiff"
    Image.fromarray(GRADIENT.astype(np.float32)).save(path)
    decoded = decode_all([str(path)], 32, mode="memory")
    assert [p for p, _ in decoded.bad] == [str(path)] and "floating-point" in decoded.bad[0][1]


def test_inspect_reports_bit_depths(tmp_path: Path) -> None:
    root = synthetic_folder(tmp_path)
    Image.fromarray(GRADIENT).save(root / "Pre" / "camera16.png")
    report = _inspect(root, tmp_path)
    assert report["bit_depths"] == {"8-bit RGB": 48, "16-bit I;16": 1}


# --------------------------------------------------------------------------- folders mapped to no class
def test_unmapped_folder_is_warned_counted_and_inspected(tmp_path: Path, caplog) -> None:
    root = synthetic_folder(tmp_path)
    other = root / "Other"
    (other / "deeper").mkdir(parents=True)
    for i, src in enumerate(sorted((root / "Pro").glob("*.png"))[:3]):
        shutil.copy(src, (other if i else other / "deeper") / f"o{i}.png")
    (root / "spec.json").unlink()  # the generator's own file, copied with the tree
    (root / "labels.csv").write_text("path,label\n")
    dm = _mapped_dm(root)
    with caplog.at_level(logging.WARNING, logger="leuk.data.sources"):
        dm.setup()
    assert "Other/ (3 files)" in caplog.text and "labels.csv" in caplog.text
    assert dm.summary["unmapped_folders_ignored"] == 1 and dm.summary["unmapped_files_ignored"] == 4
    summary = data_summary(dm)
    assert summary["unmapped_folders_ignored"] == 1 and summary["unmapped_files_ignored"] == 4
    assert len(dm.records) == 48

    report = _inspect(root, tmp_path, data="all")
    assert report["unmapped_folders"] == {str(other): 3}
    assert report["unmapped_files"] == [str(root / "labels.csv")]


def test_cnmc_unmapped_folders_are_counted(tmp_path: Path) -> None:
    root = tmp_path / "C-NMC_training_data"
    pixel = np.full((8, 8, 3), 100, np.uint8)
    for fold in ("fold_0", "fold_1"):
        for cls in ("all", "hem", "unsure"):
            (root / fold / cls).mkdir(parents=True)
            name = f"UID_{'H' if cls == 'hem' else ''}1_1_1_{cls}.bmp"
            Image.fromarray(pixel).save(root / fold / cls / name)
    (root / "fold_0" / "all" / "rejected").mkdir()
    Image.fromarray(pixel).save(root / "fold_0" / "all" / "rejected" / "x.bmp")
    (root / "validation").mkdir()
    scan = CNMCSource(str(tmp_path), folds=[0]).scan()
    assert scan.unmapped_folders == {
        str(root / "validation"): 0,
        str(root / "fold_0" / "unsure"): 1,
        str(root / "fold_0" / "all" / "rejected"): 1,
    }
    assert len(scan.records) == 2


# --------------------------------------------------------------------------- broken links
def test_broken_symlink_is_an_unreadable_image(tmp_path: Path) -> None:
    root = synthetic_folder(tmp_path)
    link = root / "Pre" / "gone.png"
    os.symlink(tmp_path / "moved_away.png", link)
    assert [r.path for r in scan_class_folders(root).records].count(str(link)) == 1
    with pytest.raises(BadImagesError) as err:
        make_dm(root).setup()
    assert "gone.png" in str(err.value) and "broken symbolic link" in str(err.value)
    dm = make_dm(root, skip_bad=True)
    dm.setup()
    assert dm.summary["bad_images_skipped"] == 1 and len(dm.records) == 48


# --------------------------------------------------------------------------- one file, two labels
def test_one_file_under_two_labels_is_refused_unless_allowed(tmp_path: Path, compose_cfg) -> None:
    root = synthetic_folder(tmp_path)
    src = sorted((root / "Early").glob("*.png"))[0]
    copy = root / "Pre" / "copy_of_early.png"
    shutil.copy(src, copy)
    with pytest.raises(DataError, match="different labels") as err:
        make_dm(root).setup()
    assert str(src) in str(err.value) and str(copy) in str(err.value)
    assert "data.allow_conflicting_labels=true" in str(err.value)

    dm = make_dm(root, allow_conflicting_labels=True)
    dm.setup()
    assert dm.summary["conflicting_label_sets"] == 1 and data_summary(dm)["conflicting_label_sets"] == 1
    report = _inspect(root, tmp_path)
    assert report["conflicting_labels"] == [
        [{"path": str(src), "class": "Early"}, {"path": str(copy), "class": "Pre"}]
    ]
    # The key is part of the data configs, and the check knows it.
    cfg = compose_cfg("data.allow_conflicting_labels=true")
    assert cfg.data.allow_conflicting_labels is True
    validate_train_config(cfg)


# --------------------------------------------------------------------------- blank and unreadable images
def test_blank_and_unreadable_images_join_no_near_duplicate_group(tmp_path: Path) -> None:
    root = synthetic_folder(tmp_path)
    # Every one of these hashes to 0: two blanks of other colours, a corrupt file, and a real
    # (non-blank) image whose brightness falls left to right.
    Image.new("RGB", (64, 64), (255, 255, 255)).save(root / "Benign" / "blank_white.png")
    Image.new("RGB", (64, 64), (0, 0, 0)).save(root / "Early" / "blank_black.png")
    (root / "Pre" / "broken.png").write_bytes(b"not a png")
    falling = np.repeat(np.linspace(250, 5, 64).astype(np.uint8)[None, :, None], 64, axis=0)
    Image.fromarray(np.repeat(falling, 3, axis=2)).save(root / "Pro" / "falling.png")
    special = {"blank_white.png", "blank_black.png", "broken.png", "falling.png"}

    report = _inspect(root, tmp_path)
    in_pairs = {Path(p).name for pair in report["near_duplicate_pairs"] for p in pair}
    assert not in_pairs & special
    assert sorted(Path(p).name for p in report["blank_images"]) == ["blank_black.png", "blank_white.png"]

    dm = make_dm(root, skip_bad=True)
    dm.setup()
    names = [Path(r.path).name for r in dm.records]
    groups = dm.grouping.groups
    for name in special - {"broken.png"}:
        assert (groups == groups[names.index(name)]).sum() == 1, name
    assert dm.summary["blank_images"] == 2


def test_group_images_leaves_out_meaningless_hashes() -> None:
    sha = ["a", "b", "c", "d"]
    dhash = np.zeros(4, dtype=np.uint64)
    assert group_images(sha, dhash, 4).n_groups == 1
    grouping = group_images(sha, dhash, 4, dhash_valid=[True, False, True, False])
    assert grouping.near_pairs == [(0, 2)] and grouping.n_groups == 3
    # Unread files (no hash) are not exact duplicates of each other either.
    assert group_images(["", "", "x"]).n_groups == 3


# --------------------------------------------------------------------------- errors naming data.root
def test_root_errors_name_data_root(tmp_path: Path) -> None:
    a_file = tmp_path / "not_a_folder"
    a_file.write_text("x")
    for root in (tmp_path / "nope", a_file):
        with pytest.raises(DataError, match=r"data\.root"):
            scan_class_folders(root)
        with pytest.raises(DataError, match=r"data\.root"):
            CNMCSource(str(root)).scan()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no fold_<k> folders.*data\.root"):
        CNMCSource(str(tmp_path / "empty")).scan()
    with pytest.raises(DataError, match=r"no class sub-folders.*data\.root"):
        scan_class_folders(tmp_path / "empty")
    with pytest.raises(DataError, match=r"data\.root"):
        _inspect(tmp_path / "nope", tmp_path, data="all")


def test_prediction_names_the_runs_data_root_when_its_images_are_gone(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    gone = tmp_path / "ALL_moved"
    steps = {"reinhard": {"_target_": "leuk.preprocess.reinhard.Reinhard", "reference": None}}
    OmegaConf.save(
        OmegaConf.create({"data": {"root": str(gone)}, "preprocess": {"steps": steps}}),
        run / ".hydra" / "config.yaml",
    )
    pd.DataFrame(
        {
            "path": [str(gone / "Benign" / f"{i}.jpg") for i in range(3)],
            "label": [0, 0, 0],
            "class_name": ["Benign"] * 3,
            "split": ["train", "train", "test"],
        }
    ).to_csv(run / "split.csv", index=False)
    message = rf"data\.root \('{gone}'\) has moved"
    with pytest.raises(DataError, match=message):
        preprocess_for_run(run, load_split(run))  # leuk.predict fits the run's preprocessing
    with pytest.raises(DataError, match=message):
        _from_split(load_split(run), "test", run, ["Benign"])  # leuk.eval on the run's split
