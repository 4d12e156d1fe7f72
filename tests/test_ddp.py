"""The DDP code path on 2 CPU processes (gloo): one run folder, rank-0 outputs, every test image
counted exactly once, and the same test metrics as a single process; and, in one process, that no
code that runs on rank 0 alone calls a collective (the other ranks would never answer it)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
import torch.distributed as dist
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.loggers import WandbLogger

import leuk.cli.train as cli_train
from leuk.callbacks import test_outputs
from leuk.cli.train import train
from leuk.data.datamodule import LeukDataModule
from leuk.data.dataset import UnpaddedDistributedSampler
from leuk.data.synthetic import SyntheticSource
from tests.helpers import PYTHON, TINY, TINY_LOADER, compose_config, subprocess_env

# A tiny run takes well under a minute; a rank waiting at a collective the other never reaches
# waits for gloo's 30-minute timeout, so this bound tells a hang from a slow machine.
# Below the suite's per-test timeout (pyproject: 180 s), so that a hung run is killed here, its
# ranks' process group with it, rather than left behind by pytest-timeout.
DDP_TIMEOUT_S = 150


def run_or_kill(cmd: list[str], cwd: Path, timeout: float) -> tuple[int | None, str]:
    """Run ``cmd`` in its own process group; past ``timeout`` kill the group (the launcher and the
    rank it spawned) and return ``None`` as the exit status, with what it wrote to stderr."""
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = proc.communicate(timeout=timeout)
        return proc.returncode, stderr
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        return None, stderr


def three_class_folder(root: Path) -> Path:
    """Three classes of 10 images: 1 test image each, 3 in all, which 2 ranks cannot split evenly."""
    scan = SyntheticSource(str(root / "gen"), images_per_class=10, size=64, seed=0).scan()
    tree = Path(scan.records[0].path).parent.parent
    dest = root / "three"
    for folder in ("Benign", "Early", "Pro"):
        shutil.copytree(tree / folder, dest / folder)
    return dest


@pytest.mark.slow
def test_ddp_cpu_end_to_end_with_noise_table_matches_single_process(tmp_path: Path) -> None:
    """Two gloo ranks share one run folder, count every test image once, and give the metrics of
    one process. The noise table (``noise_sigmas``) runs on rank 0 after the test; a metric there
    that waits for the other rank at its sync would hang, so a timeout fails the test instead.

    With the progress bar on (the default outside the tests) and the batch limits of a smoke run:
    the bar lives on rank 0 alone, and it once computed the epoch loss, a synchronized metric, at
    the end of each training epoch, so rank 0 entered a collective that rank 1 did not (gloo aborts
    with "Is there a distributed collective mismatch")."""
    data = three_class_folder(tmp_path)
    sigmas = "noise_sigmas=[0,40]"
    common = [
        "data=folder",
        f"data.root={data}",
        *TINY_LOADER,
        # Ten times faster than the default model on 2 CPU cores; which network runs does not matter.
        "model=mobilenet_m",
        "logger=csv",
        "trainer.max_epochs=1",
    ]
    smoke = [
        "trainer.enable_progress_bar=true",
        "++trainer.limit_train_batches=2",
        "++trainer.limit_val_batches=1",
        "++trainer.limit_test_batches=2",
    ]
    cmd = [PYTHON, "-m", "leuk.train", "trainer=ddp_cpu", sigmas, *common, *smoke]
    returncode, stderr = run_or_kill(cmd, tmp_path, timeout=DDP_TIMEOUT_S)
    assert returncode is not None, (
        f"2-process ddp_cpu run with {sigmas} did not finish in {DDP_TIMEOUT_S} s: {stderr[-3000:]}"
    )
    assert returncode == 0, stderr[-4000:]
    runs = list((tmp_path / "outputs" / "train").iterdir())
    assert len(runs) == 1, "the DDP ranks must share one run folder"
    run = runs[0]
    metrics = json.loads((run / "metrics.json").read_text())
    split = pd.read_csv(run / "split.csv")
    n_test = int((split["split"] == "test").sum())
    assert n_test == 3
    assert metrics["n_test"] == n_test, "a test image was dropped or counted twice"
    assert sum(map(sum, metrics["test/confusion_matrix"])) == n_test
    noise = {k: v for k, v in metrics.items() if k.startswith("noise/")}
    assert {k.split("/")[1] for k in noise} == {"0", "40"}, sorted(noise)

    # The same checkpoint tested in one process gives the same numbers, noise table included.
    single = train(
        compose_config(
            [
                *common,
                sigmas,
                "trainer=cpu",
                "train=false",
                f"ckpt_path={metrics['best_checkpoint']}",
                "logger=none",
            ],
            output_dir=tmp_path / "single",
        )
    )
    for key, value in metrics.items():
        if key.startswith(("test/", "noise/")) and key != "test/confusion_matrix":
            assert single[key] == pytest.approx(value, abs=1e-6), key
    assert single["test/confusion_matrix"] == metrics["test/confusion_matrix"]
    assert sorted(k for k in single if k.startswith("noise/")) == sorted(noise)
    # σ = 0 is the clean test split: the same numbers as the test itself.
    assert noise["noise/0/accuracy"] == pytest.approx(metrics["test/accuracy"], abs=1e-6)


def test_unpadded_sampler_shards_each_image_once_and_refuses_empty_ranks() -> None:
    data = list(range(5))
    shards = [list(UnpaddedDistributedSampler(data, num_replicas=2, rank=r)) for r in range(2)]
    assert shards == [[0, 2, 4], [1, 3]]
    assert [len(UnpaddedDistributedSampler(data, num_replicas=2, rank=r)) for r in range(2)] == [3, 2]
    # One image on two ranks would leave rank 1 out of the metric sync that rank 0 waits in.
    with pytest.raises(ValueError, match=r"1 image\(s\) cannot be shared among 2 processes"):
        UnpaddedDistributedSampler([0], num_replicas=2, rank=0)


# Every collective of torch.distributed that leuk, Lightning or torchmetrics may call.
COLLECTIVES = (
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_object",
    "all_reduce",
    "all_to_all",
    "barrier",
    "broadcast",
    "broadcast_object_list",
    "gather",
    "gather_object",
    "monitored_barrier",
    "reduce",
    "reduce_scatter",
    "scatter",
)


class RankZeroGuard:
    """Collectives that raise while a function marked ``rank_zero_only`` runs: under DDP that
    function runs on rank 0 alone (or on outputs every rank already gathered), and a collective
    there waits for ranks that never call it (a hang, or gloo's "collective mismatch")."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        self.active: list[str] = []
        self.ran: set[str] = set()
        for name in COLLECTIVES:
            monkeypatch.setattr(dist, name, self._refusing(name, getattr(dist, name)))

    def _refusing(self, name: str, collective: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if self.active:
                raise AssertionError(
                    f"torch.distributed.{name} called in {self.active[-1]}, which runs on rank 0 only"
                )
            return collective(*args, **kwargs)

        return call

    @contextmanager
    def region(self, label: str) -> Iterator[None]:
        self.active.append(label)
        self.ran.add(label)
        try:
            yield
        finally:
            self.active.pop()

    def rank_zero_only(self, owner: Any, attr: str) -> None:
        function = getattr(owner, attr)
        label = f"{owner.__name__}.{attr}"

        def guarded(*args: Any, **kwargs: Any) -> Any:
            with self.region(label):
                return function(*args, **kwargs)

        self.monkeypatch.setattr(owner, attr, guarded)


class StandInConfig(dict):
    def update(self, values: Any = (), **options: Any) -> None:  # type: ignore[override]
        # wandb's config.update takes allow_val_change=..., which a dict would store as a key.
        super().update(values)


class StandInRun:
    """What leuk's W&B code touches of a ``wandb`` run, recorded: the config, logged values, the summary."""

    def __init__(self) -> None:
        self.id = self.name = "stand-in"
        self.config = StandInConfig()
        self.logged: dict[str, Any] = {}
        self.summary: dict[str, Any] = {}

    def log(self, values: dict[str, Any], **options: Any) -> None:
        self.logged.update(values)


class WandbStandIn(WandbLogger):
    """Lightning's W&B logger around a ``StandInRun``: leuk's own W&B code runs (the hyperparameters,
    the plots as images, the summary) without starting wandb."""

    runs: ClassVar[list[StandInRun]] = []

    def __init__(self, **kwargs: Any) -> None:
        run = StandInRun()
        WandbStandIn.runs.append(run)
        super().__init__(experiment=run, **kwargs)


class PatchSplit(list):
    """A test split of lesion patches: their indices into the DataModule's samples."""

    @property
    def indices(self) -> list[int]:
        return list(self)


@contextmanager
def one_process_group(folder: Path) -> Iterator[None]:
    """A gloo process group of one: ``torch.distributed.is_initialized()`` holds, so the code takes
    its distributed branches (the unpadded samplers, the gathered test outputs, metric syncs) as
    rank 0 of a DDP job does, and a collective is a real call the guard sees."""
    dist.init_process_group("gloo", init_method=f"file://{folder / 'store'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_rank_zero_paths_call_no_collective(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each part of a run that runs on rank 0 alone (docs/scale.md lists them), run under a process
    group whose collectives raise there: the progress bar's metrics, split.csv, the plots (and their
    W&B images), the noise table (through leuk.eval's own prediction path: ``noise_rows``,
    ``predict_probs``, ``compute_metrics``), the per-image metrics (computed on every rank from the
    gathered outputs: a sync there would count each image once per rank), metrics.json, the W&B
    summary and the metric table."""
    guard = RankZeroGuard(monkeypatch)
    rank_zero = [
        (RichProgressBar, "get_metrics"),
        (LeukDataModule, "split_frame"),
        (test_outputs.TestOutputs, "_write_plots"),
        (cli_train, "noise_metrics_on_test"),
        (cli_train, "image_metrics_on_test"),
        (cli_train, "write_json"),
        (cli_train, "update_wandb_summary"),
        (cli_train, "print_metric_table"),
        (WandbStandIn, "log_hyperparams"),
    ]
    for owner, attr in rank_zero:
        guard.rank_zero_only(owner, attr)
    monkeypatch.setattr(WandbStandIn, "runs", [])
    run = tmp_path / "run"
    overrides = [
        *TINY,
        # Ten times faster than the default model on 2 CPU cores; which network runs does not matter.
        "model=mobilenet_m",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=true",
        "++trainer.limit_train_batches=1",
        "++trainer.limit_val_batches=1",
        "++trainer.num_sanity_val_steps=0",
        "logger=wandb",
        f"logger.wandb._target_={__name__}.WandbStandIn",
        "noise_sigmas=[0,8]",
    ]
    with one_process_group(tmp_path):
        metrics = train(compose_config(overrides, output_dir=run))
        # ALDL's per-image metrics (one sample per image here, so the run above returns early):
        # three patches of two images, each image predicted by the mean of its patches.
        patches = {"probs": np.array([[0.2, 0.8], [0.4, 0.6], [0.9, 0.1]]), "indices": np.arange(3)}
        patch_data = SimpleNamespace(
            patch_owner=np.array([0, 0, 1]),
            labels=np.array([1, 0]),
            class_names=["hem", "all"],
            dataset=lambda split: PatchSplit([0, 1, 2]),
        )
        per_image = cli_train.image_metrics_on_test({**patches, "targets": np.array([1, 1, 0])}, patch_data)
    assert per_image["test_image/accuracy"] == 1.0
    assert len(guard.ran) == len(rank_zero), sorted(guard.ran)
    assert (run / "split.csv").is_file() and (run / "metrics.json").is_file()
    assert set(metrics["plots"]) >= {"confusion_matrix", "roc"}
    assert {"noise/0/accuracy", "noise/8/accuracy"} <= set(metrics)
    (wandb_run,) = WandbStandIn.runs
    assert "data_summary" in wandb_run.config
    assert "plots/confusion_matrix" in wandb_run.logged
    assert wandb_run.summary["noise/8/accuracy"] == metrics["noise/8/accuracy"]
