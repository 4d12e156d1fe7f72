"""Shared fixtures: offline environment, a per-session cache, Hydra compose helpers, tiny runs."""

from __future__ import annotations

import os

# No test may touch the network or a user's cache.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", "/tmp/leuk-tests-inductor")
# Under pytest-xdist each worker gets one core's share: two workers of two intra-op threads each
# on 2 cores would spin against each other. Subprocesses (DDP ranks, sweeps) inherit the limit.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

import atexit
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

_SESSION_CACHE = tempfile.mkdtemp(prefix="leuk-tests-cache-")
# Every pytest process (each xdist worker too) makes its own cache; a finished run leaves none.
atexit.register(shutil.rmtree, _SESSION_CACHE, ignore_errors=True)
os.environ["LEUK_CACHE_DIR"] = _SESSION_CACHE
# W&B stages artifact files and caches downloads under the user's folders otherwise.
os.environ.setdefault("WANDB_DATA_DIR", os.path.join(_SESSION_CACHE, "wandb-data"))
os.environ.setdefault("WANDB_CACHE_DIR", os.path.join(_SESSION_CACHE, "wandb-cache"))

import pytest  # noqa: E402

from leuk.data.decode import DecodedImages, decode_all  # noqa: E402
from leuk.data.grouping import Grouping, group_images  # noqa: E402
from leuk.data.sources import SourceScan, scan_class_folders  # noqa: E402
from tests.helpers import ALL_CLASSES, compose_config, data_dir  # noqa: E402

# The configs find the real data through LEUK_DATA_DIR; point it at ../shared/data when that exists.
if data_dir() is not None:
    os.environ.setdefault("LEUK_DATA_DIR", str(data_dir()))


@pytest.fixture(scope="session")
def real_data() -> Path:
    d = data_dir()
    if d is None or not (d / "all_taleqani").is_dir():
        pytest.skip(
            "real data not found: set LEUK_DATA_DIR to the folder holding all_taleqani/ and cnmc_sample/"
        )
    return d


@pytest.fixture
def compose_cfg(tmp_path: Path):
    def _compose(*overrides: str, config_name: str = "train") -> DictConfig:
        return compose_config(overrides, output_dir=tmp_path, config_name=config_name)

    return _compose


@dataclass(frozen=True)
class AllTaleqani:
    """The ALL data read once: its scan, its 16 px decode (the hashes; the grouping does not depend
    on the training image size), its labels and its near-duplicate groups (dHash distance ≤ 4)."""

    scan: SourceScan
    decoded: DecodedImages
    labels: np.ndarray
    groups: Grouping


@pytest.fixture(scope="session")
def all_taleqani(real_data: Path) -> AllTaleqani:
    """Reading and hashing the 3,256 ALL images takes about 2 s on 2 cores: once per session, not
    once per test module that checks the reader, the duplicates or the splits on them."""
    scan = scan_class_folders(real_data / "all_taleqani" / "Original", ALL_CLASSES)
    decoded = decode_all([r.path for r in scan.records], 16, mode="none")
    labels = np.array([r.label for r in scan.records])
    groups = group_images(decoded.sha256, decoded.dhash, max_distance=4)
    return AllTaleqani(scan, decoded, labels, groups)


@dataclass(frozen=True)
class QuickstartRun:
    """The quick start shrunk to seconds: its metrics.json values and its per-epoch history."""

    metrics: dict
    history: list[dict[str, float]]


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory: pytest.TempPathFactory) -> QuickstartRun:
    """One short CPU run of the default config (the README's quick start) on fewer, smaller
    synthetic images; shared by the check that it learns and the check that it generalizes."""
    from leuk.plots import load_history
    from leuk.train import train

    out = tmp_path_factory.mktemp("quickstart")
    cfg = compose_config(
        [
            "data.source.images_per_class=40",
            "data.image_size=48",
            "data.batch_size=16",
            "data.num_workers=0",
            "data.persistent_workers=false",
            "trainer.max_epochs=6",
            "trainer.enable_progress_bar=false",
            "logger=csv",
        ],
        output_dir=out,
    )
    metrics = train(cfg)
    return QuickstartRun(metrics, load_history(out / "csv" / "metrics.csv"))


@dataclass(frozen=True)
class JoblibSweep:
    """A two-job Hydra multirun under the joblib launcher, with W&B offline: one job finishes, one
    fails (a negative learning rate)."""

    returncode: int
    stderr: str
    sweep: Path


@pytest.fixture(scope="session")
def joblib_sweep(tmp_path_factory: pytest.TempPathFactory) -> JoblibSweep:
    """One subprocess sweep shared by the launcher, W&B and failed-job checks (tests/test_train.py,
    tests/test_report.py): each job starts a Python process of its own, which costs more than the job."""
    import subprocess

    from tests.helpers import PYTHON, TINY, subprocess_env

    cwd = tmp_path_factory.mktemp("joblib_sweep")
    cmd = [PYTHON, "-m", "leuk.train", "-m", "optimizer.lr=0.001,-1.0", "seed=1",
           "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "logger=wandb", "trainer.max_epochs=1",
           *TINY, "plots=false", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
           "data.num_workers=1"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    sweeps = list((cwd / "multirun").iterdir()) if (cwd / "multirun").is_dir() else []
    assert len(sweeps) == 1, proc.stderr[-3000:]
    return JoblibSweep(proc.returncode, proc.stderr, sweeps[0])
