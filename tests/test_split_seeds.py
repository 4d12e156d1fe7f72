"""Every group is placed by the seed (issue 13, defect 4) and shared subjects are reported (defect 6).

A split that sorts groups by size before placing them puts the same large groups (duplicate
pairs, whole subjects) in the same part for every seed, so a mean ± std over seeds measures only
initialization noise. These tests check, on arrays and on the real data, that the seed moves every
group, that the split stays stratified with its ratios kept, and that same seed → same split.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from leuk.data.cnmc import CNMCSource
from leuk.data.datamodule import LeukDataModule
from leuk.data.sources import DataError, FolderSource
from leuk.data.splits import KFoldSplit, RatioSplit, TrainTestSplit, stratified_group_assign
from leuk.train import train
from tests.helpers import TINY_LOADER, compose_config
from tests.test_data import synthetic_folder

SEEDS = range(10)
PARTS = ("train", "val", "test")


def _groups_of(groups: np.ndarray, mask: np.ndarray) -> frozenset[int]:
    return frozenset(np.unique(groups[mask]).tolist())


def _within_largest_group(labels, groups, assign, fractions) -> None:
    """Per class and part: the part holds its target share of the class within the class's largest
    group (the tolerance ``stratified_group_assign`` promises)."""
    for c in np.unique(labels):
        in_class = labels == c
        _, sizes = np.unique(groups[in_class], return_counts=True)
        for part, frac in fractions.items():
            got = int((assign[in_class] == part).sum())
            target = frac * in_class.sum()
            assert abs(got - target) <= sizes.max(), (c, part, got, target, sizes.max())


def _subjects_array() -> tuple[np.ndarray, np.ndarray]:
    """Two classes of 'subjects' of distinct sizes 1..30 (465 images each), like C-NMC's subjects:
    a size sort leaves a seeded shuffle nothing to break ties on."""
    sizes = np.arange(1, 31)
    groups = np.concatenate([np.repeat(np.arange(30), sizes), np.repeat(30 + np.arange(30), sizes)])
    labels = (groups >= 30).astype(np.int64)
    return labels, groups


def _duplicates_array() -> tuple[np.ndarray, np.ndarray]:
    """Like the ALL data: per class, 400 single images and 40 duplicate pairs."""
    labels, groups, g = [], [], 0
    for c in range(2):
        for size in [1] * 400 + [2] * 40:
            labels += [c] * size
            groups += [g] * size
            g += 1
    return np.array(labels), np.array(groups)


# --------------------------------------------------------------------------- arrays (fast)
def test_seed_moves_groups_of_distinct_sizes() -> None:
    labels, groups = _subjects_array()
    fractions = {"train": 0.7, "val": 0.1, "test": 0.2}
    tests = []
    for seed in SEEDS:
        assign = stratified_group_assign(labels, groups, fractions, seed)
        _within_largest_group(labels, groups, assign, fractions)
        tests.append(_groups_of(groups, assign == "test"))
    assert len(set(tests)) == len(SEEDS), f"{len(set(tests))} distinct test sets over {len(SEEDS)} seeds"
    # The largest subjects are no longer pinned to train: a group reaches test in one of 10 seeds
    # with probability about 1 - 0.8**10 = 0.89, whatever its size.
    ever_tested = frozenset().union(*tests)
    largest = {25, 26, 27, 28, 29, 55, 56, 57, 58, 59}
    assert len(largest & ever_tested) >= 6, f"{len(largest & ever_tested)} of the 10 largest reach test"
    assert len(ever_tested) >= 40, f"only {len(ever_tested)} of 60 groups ever reach test"


def test_seed_moves_duplicate_pairs() -> None:
    labels, groups = _duplicates_array()
    pairs = np.bincount(groups)[groups] == 2
    fractions = {"train": 0.8, "val": 0.1, "test": 0.1}
    for seed in SEEDS:
        assign = stratified_group_assign(labels, groups, fractions, seed)
        _within_largest_group(labels, groups, assign, fractions)
        share = (assign[pairs] == "test").mean()
        assert 0.02 <= share <= 0.25, f"seed {seed}: {share:.3f} of duplicate-pair images in test"


def test_same_seed_same_assignment() -> None:
    labels, groups = _subjects_array()
    split = RatioSplit(0.7, 0.1, 0.2)
    assert (split.assign(labels, groups, 5) == split.assign(labels, groups, 5)).all()
    assert not (split.assign(labels, groups, 5) == split.assign(labels, groups, 6)).all()


@pytest.mark.parametrize("seed", SEEDS)
def test_every_part_gets_each_class_when_it_can(seed: int) -> None:
    # One large group and two single images per class: a part may not be left without the class.
    groups = np.repeat(np.arange(6), [5, 1, 1, 5, 1, 1])
    labels = (groups >= 3).astype(np.int64)
    assign = stratified_group_assign(labels, groups, {"train": 0.8, "val": 0.1, "test": 0.1}, seed)
    for c in (0, 1):
        assert set(assign[labels == c]) == set(PARTS), (seed, c)
    for g in np.unique(groups):
        assert len(set(assign[groups == g])) == 1


def test_too_few_groups_is_a_clear_error() -> None:
    groups = np.array([0, 0, 1, 2, 3, 4])
    labels = np.array([0, 0, 0, 1, 1, 1])
    with pytest.raises(DataError, match=r"'test' without any image of class 'hem'.*2 groups"):
        stratified_group_assign(labels, groups, {"train": 0.6, "val": 0.2, "test": 0.2}, 0, ["hem", "all"])


def test_train_test_split_and_its_validation_follow_the_seed() -> None:
    labels, groups = _subjects_array()
    split = TrainTestSplit(0.3, 0.1)
    vals, tests = set(), set()
    for seed in SEEDS:
        assign = split.assign(labels, groups, seed)
        _within_largest_group(labels, groups, assign, split.fractions)
        vals.add(_groups_of(groups, assign == "val"))
        tests.add(_groups_of(groups, assign == "test"))
    assert len(tests) == len(SEEDS) and len(vals) > 1


def test_kfold_places_groups_by_the_seed() -> None:
    """StratifiedGroupKFold sorts groups by the spread of their class counts (their size, for
    one-class groups) before placing them, so shuffling reorders only equal-sized groups."""
    labels, groups = _subjects_array()
    folds0, vals = set(), set()
    for seed in SEEDS:
        seen = np.zeros(len(labels), dtype=int)
        for k in range(5):
            assign = KFoldSplit(5, fold_index=k, val=0.1).assign(labels, groups, seed)
            seen += assign == "test"
            for g in np.unique(groups):
                assert len(set(assign[groups == g])) == 1
            _within_largest_group(labels, groups, assign, {"test": 0.2})
            if k == 0:
                folds0.add(_groups_of(groups, assign == "test"))
                vals.add(_groups_of(groups, assign == "val"))
        assert (seen == 1).all(), "a seed's folds must test every image exactly once"
    assert len(folds0) == len(SEEDS), (
        f"fold 0 tested {len(folds0)} distinct group sets over {len(SEEDS)} seeds"
    )
    assert len(vals) > 1


# --------------------------------------------------------------------------- real ALL data
@pytest.fixture(scope="module")
def all_groups_small(all_taleqani):
    """Labels and duplicate groups of the ALL data (the session's 16 px decode: the grouping does
    not depend on the training image size)."""
    return all_taleqani.labels, all_taleqani.groups.groups


def test_all_duplicate_groups_reach_test(all_groups_small) -> None:
    labels, groups = all_groups_small
    in_group = np.bincount(groups)[groups] > 1
    assert in_group.sum() == 172
    split = RatioSplit(0.8, 0.1, 0.1)
    tested = []
    for seed in SEEDS:
        assign = split.assign(labels, groups, seed)
        for g in np.unique(groups[in_group]):
            assert len(set(assign[groups == g])) == 1
        _within_largest_group(labels, groups, assign, split.fractions)
        for c in range(4):
            for part, target in split.fractions.items():
                assert abs((assign[labels == c] == part).mean() - target) <= 0.01
        n = int((assign[in_group] == "test").sum())
        assert n > 0, f"seed {seed}: no image of the 172 in duplicate groups is in test"
        tested.append(n)
    # About a tenth of them per seed, as for any other image.
    assert 0.05 <= np.mean(tested) / 172 <= 0.15, tested
    assert split.assign(labels, groups, 3).tolist() == split.assign(labels, groups, 3).tolist()


# --------------------------------------------------------------------------- C-NMC sample
def _cnmc(real_data: Path, seed: int, group_subjects: bool, fold: int | None = 0) -> LeukDataModule:
    dm = LeukDataModule(
        CNMCSource,
        RatioSplit(0.7, 0.1, 0.2),
        root=str(real_data / "cnmc_sample"),
        image_size=32,
        num_workers=0,
        cache="memory",
        fold=fold,
        seed=seed,
        near_duplicate_distance=None,
        group_subjects=group_subjects,
    )
    dm.setup()
    return dm


def test_cnmc_subject_grouping_test_subjects_follow_the_seed(real_data: Path) -> None:
    """MobileNet_M's per-fold protocol (fold 0, 70/10/20) at the subject level."""
    test_subjects = []
    for seed in SEEDS:
        frame = _cnmc(real_data, seed, group_subjects=True).split_frame()
        assert (frame.groupby("subject")["split"].nunique() == 1).all()
        counts = frame.groupby(["class_name", "split"]).size().unstack()
        assert set(counts.columns) == set(PARTS) and (counts > 0).all().all(), counts
        test_subjects.append(frozenset(frame.loc[frame["split"] == "test", "subject"]))
    assert len(set(test_subjects)) >= 5, (
        f"{len(set(test_subjects))} distinct test sets over {len(SEEDS)} seeds"
    )
    again = _cnmc(real_data, 4, group_subjects=True).split_frame()
    assert again.equals(_cnmc(real_data, 4, group_subjects=True).split_frame())


# --------------------------------------------------------------------------- shared subjects
def test_shared_subjects_reported_image_level_and_subject_level(
    real_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="leuk.data.datamodule"):
        image_level = _cnmc(real_data, 0, group_subjects=False, fold=None)
    shared = image_level.summary["subjects_shared"]
    assert set(shared) == {"train_test", "train_val", "val_test"}
    assert shared["train_test"] > 0, shared
    assert image_level.summary["n_subjects"] == 26
    frame = image_level.split_frame()
    by_split = {s: set(frame.loc[frame["split"] == s, "subject"]) for s in PARTS}
    assert shared["train_test"] == len(by_split["train"] & by_split["test"])
    assert shared["val_test"] == len(by_split["val"] & by_split["test"])
    assert "subjects shared" in caplog.text and "data.group_subjects=true" in caplog.text

    subject_level = _cnmc(real_data, 0, group_subjects=True, fold=None)
    assert subject_level.summary["subjects_shared"] == {"train_test": 0, "train_val": 0, "val_test": 0}
    assert subject_level.summary["n_subjects"] == 26


def test_no_subjects_reports_none(tmp_path: Path) -> None:
    """A source without subject IDs (the ALL data, any class-folder tree) reports n/a, not 0."""
    dm = LeukDataModule(
        FolderSource,
        RatioSplit(0.6, 0.2, 0.2),
        root=str(synthetic_folder(tmp_path)),
        image_size=32,
        num_workers=0,
        cache="memory",
    )
    dm.setup()
    assert dm.summary["subjects_shared"] is None
    assert dm.summary["n_subjects"] is None


def test_run_writes_shared_subjects_to_metrics_json(real_data: Path, tmp_path: Path) -> None:
    overrides = ["data=cnmc", *TINY_LOADER, "trainer.fast_dev_run=true", "logger=none", "data.fold=null"]
    train(compose_config(overrides, output_dir=tmp_path))
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["subject_grouping"] is False
    assert m["n_subjects"] == 26
    assert m["subjects_shared"]["train_test"] > 0
