"""Sources, grouping, leakage-safe splits, the decode cache and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leuk.data.datamodule import LeukDataModule
from leuk.data.decode import BadImagesError, decode_all
from leuk.data.grouping import group_images
from leuk.data.sources import DataError, FolderSource, scan_class_folders
from leuk.data.splits import RatioSplit
from leuk.data.synthetic import SyntheticSource
from tests.helpers import TINY

ALL_CLASSES = {"Benign": "Benign", "Early": "Early Pre-B", "Pre": "Pre-B", "Pro": "Pro-B"}


def synthetic_folder(root: Path, n: int = 12) -> Path:
    """A private copy of a tiny synthetic class-folder tree (tests may modify it)."""
    src = SyntheticSource(str(root / "gen"), images_per_class=n, size=64, seed=0).scan()
    tree = Path(src.records[0].path).parent.parent
    dest = root / "tree"
    shutil.copytree(tree, dest)
    return dest


def make_dm(root: Path, seed: int = 0, **kwargs) -> LeukDataModule:
    defaults = dict(image_size=32, batch_size=4, num_workers=0, cache="memory", seed=seed)
    defaults.update(kwargs)
    return LeukDataModule(FolderSource, RatioSplit(0.6, 0.2, 0.2), root=str(root), **defaults)


# --------------------------------------------------------------------------- splits
def test_same_seed_same_split_other_seed_other_split(tmp_path: Path) -> None:
    root = synthetic_folder(tmp_path)
    frames = []
    for seed in (1, 1, 2):
        dm = make_dm(root, seed=seed)
        dm.setup()
        frames.append(dm.split_frame())
    assert frames[0].equals(frames[1])
    assert not frames[0]["split"].equals(frames[2]["split"])


def test_split_is_stratified(tmp_path: Path) -> None:
    root = synthetic_folder(tmp_path, n=20)
    dm = make_dm(root)
    dm.setup()
    frame = dm.split_frame()
    counts = frame.groupby(["class_name", "split"]).size().unstack()
    assert (counts["train"] == 12).all() and (counts["val"] == 4).all() and (counts["test"] == 4).all()


def test_duplicates_never_straddle_splits(tmp_path: Path) -> None:
    root = synthetic_folder(tmp_path, n=20)
    # Three exact copies and one re-encoded (near-identical) copy inside class folders.
    benign = sorted((root / "Benign").glob("*.png"))
    for i, src in enumerate(benign[:3]):
        shutil.copy(src, src.with_name(f"copy_{i}.png"))
    Image.open(benign[5]).save(root / "Benign" / "near_copy.jpg", quality=92)
    dm = make_dm(root)
    dm.setup()
    assert len(dm.grouping.exact_pairs) == 3
    assert dm.grouping.merged >= 4
    frame = dm.split_frame()
    assert (frame.groupby("group")["split"].nunique() == 1).all()
    assert dm.summary["images_merged_into_groups"] == dm.grouping.merged


def test_grouping_off_is_reported(tmp_path: Path) -> None:
    dm = make_dm(synthetic_folder(tmp_path), group_duplicates=False)
    dm.setup()
    assert dm.summary["grouping"].startswith("off")
    assert dm.grouping.n_groups == len(dm.records)


def test_union_of_near_duplicate_chains() -> None:
    sha = ["a", "b", "c", "a", "d"]
    dh = np.array([0b0, 0b1, 0b11, 0b0, 0xFFFF], dtype=np.uint64)
    g = group_images(sha, dh, max_distance=1)
    # 0~3 exact; 0~1 and 1~2 near: one chain; 4 alone.
    assert g.groups.tolist() == [0, 0, 0, 0, 1]
    assert g.exact_pairs == [(0, 3)]


@pytest.mark.parametrize(
    ("ratios", "message"),
    [
        ((0.8, 0.1, 0.2), "must sum to 1"),
        ((0.0, 0.5, 0.5), "train must be positive"),
        ((1.2, -0.1, -0.1), r"\[0, 1\]"),
    ],
)
def test_bad_ratios(ratios, message) -> None:
    with pytest.raises(DataError, match=message):
        RatioSplit(*ratios)


def test_split_leaving_a_class_empty(tmp_path: Path) -> None:
    root = synthetic_folder(tmp_path, n=3)
    dm = LeukDataModule(
        FolderSource,
        RatioSplit(0.9, 0.05, 0.05),
        root=str(root),
        image_size=32,
        cache="memory",
        num_workers=0,
    )
    with pytest.raises(DataError, match="without any image of class"):
        dm.setup()


# --------------------------------------------------------------------------- bad input
def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=str(tmp_path / "nope")):
        scan_class_folders(tmp_path / "nope")


def test_root_without_class_folders(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="no class sub-folders"):
        scan_class_folders(tmp_path)


def test_missing_class_folder_names_it(tmp_path: Path) -> None:
    root = synthetic_folder(tmp_path)
    with pytest.raises(DataError, match=r"lacks the class folder\(s\) \['Blast'\]"):
        scan_class_folders(root, {"Benign": "Benign", "Blast": "Blast"})


def test_empty_class_folder(tmp_path: Path) -> None:
    root = synthetic_folder(tmp_path)
    (root / "Empty").mkdir()
    with pytest.raises(DataError, match=r"Empty' holds no images"):
        scan_class_folders(root)


def test_non_image_files_are_ignored_and_counted(tmp_path: Path) -> None:
    root = synthetic_folder(tmp_path)
    (root / "Pre" / "notes.txt").write_text("scanner log")
    (root / "Pro" / "Thumbs.db").write_bytes(b"\0")
    dm = make_dm(root)
    dm.setup()
    assert dm.summary["non_image_files_ignored"] == 2
    assert len(dm.records) == 48


def test_corrupt_images_are_all_listed(tmp_path: Path) -> None:
    root = synthetic_folder(tmp_path)
    (root / "Early" / "broken.png").write_bytes(b"not a png")
    good = (root / "Pro" / "pro_00000.png").read_bytes()
    (root / "Pro" / "truncated.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(BadImagesError) as err:
        make_dm(root).setup()
    msg = str(err.value)
    assert "2 image(s)" in msg and "broken.png" in msg and "truncated.png" in msg and "skip_bad" in msg
    dm = make_dm(root, skip_bad=True)
    dm.setup()
    assert dm.summary["bad_images_skipped"] == 2
    assert len(dm.records) == 48


# --------------------------------------------------------------------------- cache
def test_disk_cache_is_reused(tmp_path: Path) -> None:
    root = synthetic_folder(tmp_path)
    paths = [r.path for r in scan_class_folders(root).records]
    first = decode_all(paths, 32, mode="disk", cache_dir=tmp_path / "cache", source_key="t")
    second = decode_all(paths, 32, mode="disk", cache_dir=tmp_path / "cache", source_key="t")
    assert not first.from_cache and second.from_cache
    assert np.array_equal(np.asarray(first.images), np.asarray(second.images))
    assert first.sha256 == second.sha256
    other_size = decode_all(paths, 40, mode="disk", cache_dir=tmp_path / "cache", source_key="t")
    assert not other_size.from_cache and other_size.images.shape[1:] == (40, 40, 3)


def test_uncached_mode_decodes_the_same_pixels(tmp_path: Path) -> None:
    root = synthetic_folder(tmp_path)
    cached = make_dm(root, cache="memory")
    lazy = make_dm(root, cache="none")
    cached.setup()
    lazy.setup()
    a, _ = cached.dataset("test")[0]
    b, _ = lazy.dataset("test")[0]
    assert a.dtype == b.dtype and a.shape == b.shape == (3, 32, 32)
    assert (a == b).all()


# --------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def all_dataset(all_taleqani):
    return all_taleqani.scan, all_taleqani.decoded


def test_all_reader_counts(all_dataset) -> None:
    scan, decoded = all_dataset
    counts = np.bincount([r.label for r in scan.records])
    assert counts.tolist() == [504, 985, 963, 804]
    assert scan.class_names == ["Benign", "Early Pre-B", "Pre-B", "Pro-B"]
    assert not decoded.bad


def test_all_exact_duplicates(all_dataset) -> None:
    scan, decoded = all_dataset
    g = group_images(decoded.sha256, decoded.dhash, max_distance=None)
    assert len(g.exact_pairs) == 40
    near = group_images(decoded.sha256, decoded.dhash, max_distance=4)
    labels = np.array([r.label for r in scan.records])
    for members in near.multi_image_groups():
        assert len(set(labels[members])) == 1, "a duplicate group spans two classes"


def test_all_ratio_split_is_leakage_safe_and_stratified(all_dataset) -> None:
    scan, decoded = all_dataset
    labels = np.array([r.label for r in scan.records])
    g = group_images(decoded.sha256, decoded.dhash, max_distance=4)
    assign = RatioSplit(0.8, 0.1, 0.1).assign(labels, g.groups, seed=7)
    for members in g.multi_image_groups():
        assert len(set(assign[members])) == 1
    for c in range(4):
        in_class = labels == c
        for part, target in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
            share = (assign[in_class] == part).mean()
            assert abs(share - target) <= 0.01, (c, part, share)


def test_cache_timing_runs_each_setting(tmp_path: Path) -> None:
    from leuk.cli.timing import main as timing_main

    out = tmp_path / "timing.json"
    assert (
        timing_main(["data", *TINY, f"paths.cache_dir={tmp_path}", "--epochs", "2", "--out", str(out)]) == 0
    )
    result = json.loads(out.read_text())
    settings = result["settings"]
    assert len(settings) == 3
    counts = {r["train_images"] for r in settings.values()}
    assert len(counts) == 1 and counts.pop() > 0
    assert all(len(r["epoch_s"]) == 2 and r["setup_s"] > 0 for r in settings.values())
    # Only the third setting reads what the second wrote.
    assert [r["cache_hit"] for r in settings.values()] == [False, False, True]
