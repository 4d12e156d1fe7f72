"""The DDP code path on 2 CPU processes (gloo): one run folder, rank-0 outputs, every test image
counted exactly once, and the same test metrics as a single process."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from leuk.data.dataset import UnpaddedDistributedSampler
from leuk.data.synthetic import SyntheticSource
from leuk.train import train
from tests.helpers import PYTHON, TINY_LOADER, compose_config, subprocess_env


def three_class_folder(root: Path) -> Path:
    """Three classes of 10 images: 1 test image each, 3 in all, which 2 ranks cannot split evenly."""
    scan = SyntheticSource(str(root / "gen"), images_per_class=10, size=64, seed=0).scan()
    tree = Path(scan.records[0].path).parent.parent
    dest = root / "three"
    for folder in ("Benign", "Early", "Pro"):
        shutil.copytree(tree / folder, dest / folder)
    return dest


@pytest.mark.slow
def test_ddp_cpu_end_to_end_matches_single_process(tmp_path: Path) -> None:
    data = three_class_folder(tmp_path)
    common = ["data=folder", f"data.root={data}", *TINY_LOADER, "logger=csv", "trainer.max_epochs=1"]
    cmd = [PYTHON, "-m", "leuk.train", "trainer=ddp_cpu", *common]
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = list((tmp_path / "outputs" / "train").iterdir())
    assert len(runs) == 1, "the DDP ranks must share one run folder"
    run = runs[0]
    metrics = json.loads((run / "metrics.json").read_text())
    split = pd.read_csv(run / "split.csv")
    n_test = int((split["split"] == "test").sum())
    assert n_test == 3
    assert metrics["n_test"] == n_test, "a test image was dropped or counted twice"
    assert sum(map(sum, metrics["test/confusion_matrix"])) == n_test

    # The same checkpoint tested in one process gives the same numbers.
    single = train(
        compose_config(
            [*common, "trainer=cpu", "train=false", f"ckpt_path={metrics['best_checkpoint']}", "logger=none"],
            output_dir=tmp_path / "single",
        )
    )
    for key, value in metrics.items():
        if key.startswith("test/") and key != "test/confusion_matrix":
            assert single[key] == pytest.approx(value, abs=1e-6), key
    assert single["test/confusion_matrix"] == metrics["test/confusion_matrix"]


def test_unpadded_sampler_shards_each_image_once_and_refuses_empty_ranks() -> None:
    data = list(range(5))
    shards = [list(UnpaddedDistributedSampler(data, num_replicas=2, rank=r)) for r in range(2)]
    assert shards == [[0, 2, 4], [1, 3]]
    assert [len(UnpaddedDistributedSampler(data, num_replicas=2, rank=r)) for r in range(2)] == [3, 2]
    # One image on two ranks would leave rank 1 out of the metric sync that rank 0 waits in.
    with pytest.raises(ValueError, match=r"1 image\(s\) cannot be shared among 2 processes"):
        UnpaddedDistributedSampler([0], num_replicas=2, rank=0)
