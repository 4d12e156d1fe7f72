"""The DDP code path on 2 CPU processes (gloo): one run folder, rank-0 outputs, every test image
counted exactly once, and the same test metrics as a single process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from leuk.cli.train import train
from leuk.data.dataset import UnpaddedDistributedSampler
from leuk.data.synthetic import SyntheticSource
from tests.helpers import PYTHON, TINY_LOADER, compose_config, subprocess_env

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
    that waits for the other rank at its sync would hang, so a timeout fails the test instead."""
    data = three_class_folder(tmp_path)
    sigmas = "noise_sigmas=[0,40]"
    common = ["data=folder", f"data.root={data}", *TINY_LOADER, "logger=csv", "trainer.max_epochs=1"]
    cmd = [PYTHON, "-m", "leuk.train", "trainer=ddp_cpu", sigmas, *common]
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
