"""End-to-end training runs on the synthetic data (tiny sizes: seconds each on 2 CPU cores)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from leuk.checkpoints import CheckpointMismatchError
from leuk.cli.train import train
from leuk.data.synthetic import SyntheticSource
from tests.helpers import (
    OFFLINE_FROM_SCRATCH,
    TINY,
    TINY_LOADER,
    compose_config,
    data_dir,
)
from tests.test_configs import all_options

# Options that need hardware this machine may not have.
NEEDS_GPU = {("trainer", "gpu"), ("trainer", "ddp"), ("trainer", "slurm")}
# Multi-process options relaunch the command line, so they run as a subprocess (tests/test_ddp.py).
SUBPROCESS_ONLY = {("trainer", "ddp_cpu")}
# Options that read the real data sets (LEUK_DATA_DIR).
REAL_DATA = {
    ("data", "all"),
    ("data", "cnmc"),
    ("experiment", "mcb_hypernet_paper"),
    ("experiment", "mseenet_paper"),
    ("experiment", "vgg16_paper"),
    ("experiment", "mobilenet_m_paper"),
    ("experiment", "mobilenet_m_all"),
}
# Options that only configure a Hydra sweep: composing them is tested in test_configs.
NOT_A_RUN = {"sweep"}
# Options that cannot run at the tiny size, with what they need instead.
EXTRA_OVERRIDES = {
    ("model", "inception_v3"): ["data.image_size=80"],
    # Their frozen parts (block 5; the first epochs' backbone) are random without ImageNet weights.
    ("model", "vgg16_mod"): ["model.allow_random_frozen=true"],
    ("model", "mseenet"): ["model.allow_random_frozen=true"],
    # ALDL's preprocessing of the 3,256 ALL images takes over a minute on 2 cores: the same protocol
    # (preprocessing, 70/30 split, losses) runs on the tiny synthetic set instead, and its lesion
    # crop (a fixed 224 px, not data.image_size) at the tiny size.
    ("experiment", "aldl_paper"): ["data=synthetic", "preprocess.steps.lesion.size=32"],
    ("experiment", "aldl_paper_adam"): ["data=synthetic", "preprocess.steps.lesion.size=32"],
}


def run_options() -> list[tuple[str, str]]:
    return [(g, o) for g, o in all_options() if g not in NOT_A_RUN and (g, o) not in SUBPROCESS_ONLY]


def tiny_folder(tmp_root: Path) -> str:
    """A class-folder tree (the tiny synthetic set) for ``data=folder``."""
    source = SyntheticSource(str(tmp_root / "synthetic"), images_per_class=12, size=64, seed=0)
    return str(Path(source.scan().records[0].path).parent.parent)


@pytest.mark.parametrize(("group", "option"), run_options())
def test_fast_dev_run_every_option(group: str, option: str, tmp_path: Path) -> None:
    if (group, option) in NEEDS_GPU and not torch.cuda.is_available():
        pytest.skip(f"{group}={option} needs a CUDA GPU")
    # Plots are tested on purpose once (tests/test_eval.py); here they would only cost time.
    overrides = [f"{group}={option}", *TINY, "trainer.fast_dev_run=true"]
    if (group, option) in REAL_DATA:
        if data_dir() is None:
            pytest.skip(f"{group}={option} reads the real data set: set LEUK_DATA_DIR")
        overrides = [f"{group}={option}", *TINY_LOADER, "trainer.fast_dev_run=true"]
    if (group, option) == ("data", "folder"):
        overrides = [f"{group}={option}", *TINY_LOADER, "trainer.fast_dev_run=true"]
        overrides.append(f"data.root={tiny_folder(tmp_path)}")
    if group != "logger":
        overrides.append("logger=none")
    if group == "experiment":
        overrides += OFFLINE_FROM_SCRATCH
    overrides += [*EXTRA_OVERRIDES.get((group, option), []), "plots=false"]
    cfg = compose_config(overrides, output_dir=tmp_path)
    metrics = train(cfg)
    assert metrics["n_test"] > 0
    assert 0.0 <= metrics["test/accuracy"] <= 1.0
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["model"] == cfg.model.name
    assert (tmp_path / "split.csv").is_file()


def test_quickstart_learns(quickstart_run) -> None:
    """A short CPU run of the default config on synthetic data must learn its training images far
    beyond chance (0.25 for 4 classes) and write a tested run.

    Whether it also generalizes in six epochs is tests/test_fidelity_mcb.py's
    test_quickstart_generalizes (same run): the default MCB-HyperNet's eval-mode predictions stay
    near chance for the first epochs of this budget, while its training accuracy climbs."""
    metrics, history = quickstart_run.metrics, quickstart_run.history
    assert metrics["n_test"] == 16
    assert 0.0 <= metrics["test/accuracy"] <= 1.0
    assert metrics["train_images_per_s"] > 0
    assert Path(metrics["best_checkpoint"]).is_file()
    train_epochs = [h for h in history if "train/loss" in h]
    assert len(train_epochs) == 6, history
    first, last = train_epochs[0], train_epochs[-1]
    # Measured over epochs 2-5 of runs with seeds 0 and 42, 48 and 64 px, batches of 8 and 16 (2-core
    # CPU): training loss 0.76-1.19 and accuracy 0.53-0.69, against ln(4) = 1.386 and 0.25 at chance.
    # With 40 images per class (this fixture, seeds 42 and 0): last-epoch loss 0.87 and 0.99 (first
    # epoch 2.55 and 2.74), accuracy 0.72 and 0.65.
    assert last["train/loss"] < math.log(4) - 0.15, history
    assert last["train/loss"] < first["train/loss"] - 0.3, history
    assert last["train/accuracy"] >= 0.45, history


def test_metrics_json_and_split_csv(tmp_path: Path) -> None:
    cfg = compose_config([*TINY, "trainer.max_epochs=1", "logger=csv"], output_dir=tmp_path)
    train(cfg)
    m = json.loads((tmp_path / "metrics.json").read_text())
    for key in (
        "test/accuracy",
        "test/f1",
        "test/mcc",
        "test/auroc",
        "val/mcc",
        "val/loss",
        "n_test",
        "wall_time_s",
        "train_images_per_s",
    ):
        assert key in m, key
    import pandas as pd

    split = pd.read_csv(tmp_path / "split.csv")
    assert {"path", "label", "class_name", "split", "group"} <= set(split.columns)
    assert set(split["split"]) == {"train", "val", "test"}
    assert all(Path(p).is_absolute() for p in split["path"])
    assert (split["split"] == "test").sum() == m["n_test"]
    assert (tmp_path / "csv" / "metrics.csv").is_file()
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    # The papers' metric variants (issue 13, defect 7), for validation and test alike.
    for stage in ("val", "test"):
        for key in ("weighted/precision", "weighted/recall", "weighted/f1", "auroc_hard"):
            assert isinstance(m.get(f"{stage}/{key}"), float), f"{stage}/{key}"
    assert "auroc_hard" in m["metric_definitions"]


def test_resume_from_last_checkpoint(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    common = [*TINY, "logger=none", "plots=false"]
    one_epoch = train(compose_config([*common, "trainer.max_epochs=1"], output_dir=first))
    last = first / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["epoch"] == 0
    resumed = train(compose_config([*common, "trainer.max_epochs=2", f"ckpt_path={last}"], output_dir=second))
    # As a run of two epochs straight through: the step count goes on from the first epoch's.
    assert resumed["epochs_trained"] == 2
    assert resumed["global_step"] == 2 * one_epoch["global_step"] > 0
    # The resumed run trained only the missing epoch: its last checkpoint continues the first run's.
    assert torch.load(second / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 1


def test_checkpoint_of_another_model_is_refused(tmp_path: Path) -> None:
    train(compose_config([*TINY, "logger=none", "trainer.max_epochs=1"], output_dir=tmp_path / "a"))
    ckpt = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=False)
    ckpt["leuk_model_name"] = "resnet18"
    ckpt["leuk"]["model"]["name"] = "resnet18"
    other = tmp_path / "other.ckpt"
    torch.save(ckpt, other)
    cfg = compose_config([*TINY, "logger=none", f"ckpt_path={other}"], output_dir=tmp_path / "b")
    with pytest.raises(CheckpointMismatchError, match=r"'resnet18' model.*'mcb_hypernet'"):
        train(cfg)


def test_wandb_run_finished_when_training_fails(tmp_path: Path) -> None:
    import wandb

    cfg = compose_config(
        [*TINY, "logger=wandb", "trainer.max_epochs=1", "optimizer.lr=-1.0"], output_dir=tmp_path
    )
    with pytest.raises(Exception, match="learning rate"):
        train(cfg)
    assert wandb.run is None


@pytest.mark.slow
def test_multirun_jobs_under_joblib_each_with_a_wandb_run_and_a_loader_worker(joblib_sweep) -> None:
    """`-m` from another working directory under joblib: two jobs at once, each with a DataLoader
    worker (loky's default context cannot start one, so the DataModule names the start method) and
    a W&B run of its own; the failing job does not stop the other."""
    sweep = joblib_sweep.sweep
    assert joblib_sweep.returncode != 0, "a failed job must fail the sweep"
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    finished = json.loads((sweep / "0" / "metrics.json").read_text())
    assert finished["seed"] == 1 and finished["n_test"] > 0
    # A W&B run left open would make the next job's run share it or hang: one run per job, two ids.
    runs = [list((sweep / job / "wandb").glob("offline-run-*")) for job in ("0", "1")]
    assert [len(r) for r in runs] == [1, 1], runs
    assert len({r[0].name.rsplit("-", 1)[-1] for r in runs}) == 2


def test_noise_sigmas_after_the_test(tmp_path: Path) -> None:
    """noise_sigmas: the test split again under noise; σ = 0 repeats the plain test metrics."""
    cfg = compose_config(
        [*TINY, "logger=none", "trainer.max_epochs=1", "noise_sigmas=[0,80]"], output_dir=tmp_path
    )
    metrics = train(cfg)
    for metric in ("accuracy", "f1", "mcc"):
        assert metrics[f"noise/0/{metric}"] == pytest.approx(metrics[f"test/{metric}"], abs=1e-6)
    assert "noise/80/accuracy" in json.loads((tmp_path / "metrics.json").read_text())
    from leuk.config.validate import ConfigError

    with pytest.raises(ConfigError, match="noise_sigmas"):
        train(compose_config([*TINY, "noise_sigmas=[-1]"], output_dir=tmp_path / "bad"))


def test_checkpoint_rebuilds_the_network_and_older_formats_load_or_are_refused(tmp_path: Path) -> None:
    """load_trained rebuilds the tested network from the checkpoint alone (normalization
    included); a checkpoint of main's format (1: hyperparameters, keys net.<arch>) loads the same
    weights; an unknown format is refused naming the file and its version."""
    from leuk.checkpoints import CheckpointError, load_trained

    train(compose_config([*TINY, "logger=none", "trainer.max_epochs=1"], output_dir=tmp_path / "run"))
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(path, weights_only=False)
    assert ckpt["leuk"]["format_version"] == 2 and ckpt["leuk"]["model"]["name"] == "mcb_hypernet"
    trained = load_trained(path)
    assert trained.model_name == "mcb_hypernet" and trained.image_size == ckpt["leuk"]["image_size"]
    x = torch.randint(0, 256, (3, 3, trained.image_size, trained.image_size), dtype=torch.uint8)
    probs = trained.module.predict_step((x, torch.zeros(3, dtype=torch.long)), 0)
    assert probs.shape == (3, len(trained.class_names))
    assert torch.allclose(probs.sum(dim=1), torch.ones(3))

    old = dict(ckpt)
    info = old.pop("leuk")
    old["state_dict"] = {k.replace("net.body.", "net.", 1): v for k, v in ckpt["state_dict"].items()}
    old["hyper_parameters"] = {**info, "loss": {"_target_": "torch.nn.CrossEntropyLoss"}}
    torch.save(old, tmp_path / "old.ckpt")
    assert torch.equal(load_trained(tmp_path / "old.ckpt").module.predict_step(x, 0), probs)
    with pytest.raises(CheckpointError, match=r"format 1"):
        train(
            compose_config(
                [*TINY, "logger=none", f"ckpt_path={tmp_path / 'old.ckpt'}"], output_dir=tmp_path / "b"
            )
        )

    future = {**ckpt, "leuk": {**info, "format_version": 99}}
    torch.save(future, tmp_path / "future.ckpt")
    with pytest.raises(CheckpointError, match=r"future\.ckpt.*format 99"):
        load_trained(tmp_path / "future.ckpt")
    with pytest.raises(CheckpointError, match=r"missing\.ckpt"):
        load_trained(tmp_path / "missing.ckpt")
