"""The published split protocols, C-NMC and its fold balancing, and the other balancing options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage.color import rgb2hsv

from leuk.data.cnmc import CNMCSource, parse_subject
from leuk.data.datamodule import LeukDataModule
from leuk.data.inspect import inspect_data
from leuk.data.sources import DataError, FolderSource
from leuk.data.splits import KFoldSplit, RatioSplit, TrainTestSplit
from tests.helpers import compose_config
from tests.test_data import ALL_CLASSES, synthetic_folder


def cnmc_dm(real_data: Path, **kwargs) -> LeukDataModule:
    args = dict(image_size=32, num_workers=0, cache="memory", fold=0, seed=3, near_duplicate_distance=None)
    args.update(kwargs)
    return LeukDataModule(CNMCSource, RatioSplit(0.7, 0.1, 0.2), root=str(real_data / "cnmc_sample"), **args)


# --------------------------------------------------------------------------- C-NMC
def test_subject_parsing() -> None:
    assert parse_subject("UID_11_1_2_all.bmp") == "11"
    assert parse_subject("/x/UID_H12_3_1_hem.bmp") == "H12"
    assert parse_subject("other.bmp") is None


def test_cnmc_reader_finds_the_sample(real_data: Path) -> None:
    scan = CNMCSource(str(real_data / "cnmc_sample")).scan()
    assert len(scan.records) == 52
    assert scan.folder_names == ["hem", "all"]
    by_fold = {k: sum(r.fold == k for r in scan.records) for k in (0, 1, 2)}
    assert by_fold == {0: 20, 1: 12, 2: 20}
    assert all(r.subject for r in scan.records)
    assert all((r.label == 0) == r.subject.startswith("H") for r in scan.records)
    only = CNMCSource(str(real_data / "cnmc_sample" / "C-NMC_training_data"), folds=[1]).scan()
    assert len(only.records) == 12
    with pytest.raises(DataError, match=r"fold\(s\) \[7\] not found"):
        CNMCSource(str(real_data / "cnmc_sample"), folds=[7]).scan()


def test_cnmc_per_fold_split(real_data: Path) -> None:
    dm = cnmc_dm(real_data)
    dm.setup()
    frame = dm.split_frame()
    assert len(frame) == 20 and frame["path"].str.contains("fold_0").all()
    counts = frame.groupby(["class_name", "split"]).size().unstack()
    assert (counts["train"] == 7).all() and (counts["val"] == 1).all() and (counts["test"] == 2).all()
    with pytest.raises(DataError, match=r"data.fold=5 is out of range"):
        cnmc_dm(real_data, fold=5).setup()


def test_hsv_copy_balancing_doubles_training_hem_only(real_data: Path) -> None:
    plain = cnmc_dm(real_data)
    plain.setup()
    dm = cnmc_dm(real_data, balance="hsv_copy")
    dm.setup()
    hem = dm.scan.folder_names.index("hem")
    train_hem = (dm.labels[dm.indices["train"]] == hem).sum()
    ds = dm.dataset("train")
    labels = [ds[i][1] for i in range(len(ds))]
    assert labels.count(hem) == 2 * train_hem
    assert len(ds) == len(plain.dataset("train")) + train_hem
    for part in ("val", "test"):
        assert len(dm.dataset(part)) == len(plain.dataset(part))
    # Every copy comes from a training image and is that image's desaturated HSV array.
    assert set(dm.assignment[dm.copy_of]) == {"train"}
    original = np.asarray(dm.decoded.images[dm.copy_of[0]])
    expected_hsv = rgb2hsv(original)
    copy = dm.copy_images[0].astype(np.float64) / 255
    assert np.abs(copy[..., 1]).max() == 0
    assert np.allclose(copy[..., 2], expected_hsv[..., 2], atol=1 / 255)
    frame = dm.split_frame()
    assert (frame["variant"] == "hsv_copy").sum() == train_hem
    assert set(frame.loc[frame["variant"] == "hsv_copy", "split"]) == {"train"}


def test_hsv_copy_as_rgb_is_grey(real_data: Path) -> None:
    dm = cnmc_dm(real_data, balance="hsv_copy", hsv_copy_as_rgb=True)
    dm.setup()
    copy = dm.copy_images[0].astype(int)
    assert np.abs(copy[..., 0] - copy[..., 1]).max() <= 1 and np.abs(copy[..., 1] - copy[..., 2]).max() <= 1


def test_subject_grouping_keeps_subjects_together(real_data: Path) -> None:
    dm = cnmc_dm(real_data, fold=None, group_subjects=True)
    dm.setup()
    frame = dm.split_frame()
    assert (frame.groupby("subject")["split"].nunique() == 1).all()
    assert dm.summary["subject_grouping"] is True


# --------------------------------------------------------------------------- protocols
def test_kfold_covers_every_image_once_as_test(tmp_path: Path) -> None:
    root = synthetic_folder(tmp_path, n=15)
    tests = []
    for k in range(5):
        dm = LeukDataModule(
            FolderSource,
            KFoldSplit(5, fold_index=k),
            root=str(root),
            image_size=32,
            cache="memory",
            num_workers=0,
        )
        dm.setup()
        tests.append(set(dm.indices["test"].tolist()))
        assert len(dm.indices["val"]) > 0
    assert sum(len(t) for t in tests) == 60
    assert set().union(*tests) == set(range(60))
    with pytest.raises(DataError, match=r"data.split.fold_index=5 is out of range"):
        LeukDataModule(
            FolderSource, KFoldSplit(5, fold_index=5), root=str(root), image_size=32, cache="memory"
        ).setup()


def test_fold_index_needs_a_kfold_split(tmp_path: Path) -> None:
    # data.split.fold_index is the k-fold split's own key: a ratio split has none to set, and the
    # DataModule has no fold_index to pass on.
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="fold_index"):
        compose_config(["data=folder", f"data.root={tmp_path}", "data.split.fold_index=1"])
    with pytest.raises(TypeError, match="fold_index"):
        RatioSplit(fold_index=1)
    with pytest.raises(TypeError, match="fold_index"):
        LeukDataModule(FolderSource, RatioSplit(), root=str(tmp_path), fold_index=1)
    cfg = compose_config(
        ["data=folder", f"data.root={tmp_path}", "data/split=kfold", "data.split.fold_index=3"]
    )
    assert "fold_index" not in cfg.data and cfg.data.split.fold_index == 3


def test_datamodule_builds_its_source_from_data_root_and_changes_nothing_given(tmp_path: Path) -> None:
    """data.root is the one key of the folder: the source is built from it (no root patched into a
    built source), and the split, augmentation and preprocessing handed in are not written to."""
    from hydra.utils import instantiate

    from leuk.preprocess import build_preprocess

    root = synthetic_folder(tmp_path, n=15)
    cfg = compose_config(["data=folder", f"data.root={root}", "data/split=kfold", "data.split.fold_index=2"])
    assert "root" not in cfg.data.source
    split = KFoldSplit(5, fold_index=2)
    pipeline = build_preprocess({"clahe": {"_target_": "leuk.preprocess.clahe.Clahe"}})
    marker = object()
    dm = instantiate(
        cfg.data, split=split, image_size=32, cache="memory", num_workers=0, train_transform=marker,
        preprocess=pipeline,
    )  # fmt: skip
    assert isinstance(dm.source, FolderSource) and dm.source.root == str(root)
    dm.setup()
    assert dm.split is split and split.fold_index == 2 and vars(split) == vars(KFoldSplit(5, fold_index=2))
    assert dm.train_transform is marker and dm.preprocess is pipeline and pipeline.names == ["clahe"]
    assert len(dm.indices["test"]) == 12
    with pytest.raises(DataError, match=r"data\.source must build the source from data\.root"):
        LeukDataModule(FolderSource(str(root)), RatioSplit())
    with pytest.raises(DataError, match=r"set data\.root"):
        LeukDataModule(FolderSource, RatioSplit()).setup()
    # The synthetic source generates its images under data.root too.
    synthetic = compose_config(["data=synthetic", f"paths.cache_dir={tmp_path}/cache"])
    assert synthetic.data.root == f"{tmp_path}/cache/synthetic" and "root" not in synthetic.data.source


def test_train_test_split_with_and_without_validation(tmp_path: Path) -> None:
    root = synthetic_folder(tmp_path, n=20)
    dm = LeukDataModule(
        FolderSource, TrainTestSplit(0.3, 0.0), root=str(root), image_size=32, cache="memory", num_workers=0
    )
    dm.setup()
    assert len(dm.indices["val"]) == 0 and not dm.has_val and dm.val_dataloader() == []
    assert len(dm.indices["test"]) == 24


def test_all_root_at_either_level(real_data: Path) -> None:
    top = FolderSource(str(real_data / "all_taleqani"), ALL_CLASSES, variant="Original")
    inner = FolderSource(str(real_data / "all_taleqani" / "Original"), ALL_CLASSES, variant="Original")
    assert top.resolved_root() == inner.resolved_root()


@pytest.fixture(scope="module")
def all_groups(all_taleqani):
    return all_taleqani.labels, all_taleqani.groups


@pytest.mark.parametrize(
    ("split", "targets"),
    [
        (RatioSplit(0.8, 0.1, 0.1), {"train": 0.8, "val": 0.1, "test": 0.1}),
        (TrainTestSplit(0.3, 0.1), {"train": 0.63, "val": 0.07, "test": 0.3}),
        (TrainTestSplit(0.4, 0.0), {"train": 0.6, "val": 0.0, "test": 0.4}),
    ],
    ids=["80-10-10", "70-30", "60-40"],
)
def test_all_protocols_leakage_safe_and_stratified(all_groups, split, targets) -> None:
    labels, g = all_groups
    assign = split.assign(labels, g.groups, seed=11)
    for members in g.multi_image_groups():
        assert len(set(assign[members])) == 1
    for c in range(4):
        for part, target in targets.items():
            assert abs((assign[labels == c] == part).mean() - target) <= 0.01


def test_all_kfold_leakage_safe(all_groups) -> None:
    labels, g = all_groups
    seen = np.zeros(len(labels), dtype=int)
    for k in range(5):
        split = KFoldSplit(5, fold_index=k)
        assign = split.assign(labels, g.groups, seed=0)
        seen += assign == "test"
        for members in g.multi_image_groups():
            assert len(set(assign[members])) == 1
        for c in range(4):
            assert abs((assign[labels == c] == "test").mean() - 0.2) <= 0.01
    assert (seen == 1).all()


# --------------------------------------------------------------------------- balancing
def test_oversample_weighted_sampler_and_class_weights(tmp_path: Path) -> None:
    root = synthetic_folder(tmp_path, n=20)
    for extra in sorted((root / "Pro").glob("*.png"))[:12]:
        extra.unlink()  # Pro: 8 images, the others 20

    def dm(balance: str) -> LeukDataModule:
        m = LeukDataModule(
            FolderSource,
            RatioSplit(0.5, 0.25, 0.25),
            root=str(root),
            image_size=32,
            cache="memory",
            num_workers=0,
            balance=balance,
            batch_size=64,
        )
        m.setup()
        return m

    over = dm("oversample")
    train_labels = over.labels[over.train_indices]
    assert np.bincount(train_labels).tolist() == [10, 10, 10, 10]
    assert len(over.dataset("val")) == len(dm("none").dataset("val"))
    weighted = dm("class_weights")
    w = np.array(weighted.class_weights)
    assert w[3] > w[0] and np.isclose((w * np.bincount(weighted.labels[weighted.indices["train"]])).sum(), 34)
    sampled = dm("weighted_sampler")
    sampler = sampled.train_dataloader().sampler
    # Draws with replacement, each image weighted by the inverse of its class's frequency.
    train_labels = sampled.labels[sampled.train_indices]
    assert sampler.weights is not None
    assert np.allclose(sampler.weights * np.bincount(train_labels)[train_labels], 1.0)


# --------------------------------------------------------------------------- inspect
def test_inspect_reports_duplicates(tmp_path: Path) -> None:
    import shutil

    root = synthetic_folder(tmp_path)
    src = sorted((root / "Early").glob("*.png"))[0]
    shutil.copy(src, root / "Early" / "dup.png")
    (root / "Pre" / "broken.png").write_bytes(b"junk")
    cfg = compose_config(["data=folder", f"data.root={root}"], output_dir=tmp_path, config_name="inspect")
    from hydra.utils import instantiate

    report = inspect_data(instantiate(cfg.data))
    assert report["n_images"] == 50
    assert len(report["exact_duplicate_pairs"]) == 1
    assert len(report["bad_files"]) == 1 and report["bad_files"][0]["path"].endswith("broken.png")
    assert report["class_counts"]["Early"] == 13


def test_class_weights_reach_the_loss(tmp_path: Path) -> None:
    import torch

    from leuk.composition import build_criterion as build_loss
    from leuk.train import train

    root = synthetic_folder(tmp_path, n=20)
    for extra in sorted((root / "Pro").glob("*.png"))[:10]:
        extra.unlink()
    cfg = compose_config(
        ["data=folder", f"data.root={root}", "data.balance=class_weights", "data.image_size=32",
         "data.num_workers=0", "data.persistent_workers=false", "trainer.max_epochs=1", "logger=none",
         "trainer.enable_progress_bar=false"],
        output_dir=tmp_path / "run",
    )  # fmt: skip
    metrics = train(cfg)
    assert metrics["balance"] == "class_weights"
    # The weighted loss is part of the module: its weights are in the checkpoint's state dict.
    weights = torch.load(metrics["best_checkpoint"], weights_only=False)["state_dict"]["criterion.weight"]
    assert len(weights) == 4 and weights[3] > weights[0]  # Pro, the smallest class, weighs most
    ce = build_loss({"_target_": "torch.nn.CrossEntropyLoss"}, [1.0, 2.0])
    assert torch.equal(ce.weight, torch.tensor([1.0, 2.0]))
    focal = build_loss({"_target_": "leuk.losses.FocalLoss", "gamma": 2.0}, [1.0, 2.0])
    assert torch.allclose(torch.as_tensor(focal.alpha).flatten(), torch.tensor([1.0, 2.0]))
