"""Shared fixtures: offline environment, a per-session cache, Hydra compose helpers, tiny runs."""

from __future__ import annotations

import os

# No test may touch the network or a user's cache.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", "/tmp/leuk-tests-inductor")

import tempfile
from pathlib import Path

from omegaconf import DictConfig

_SESSION_CACHE = tempfile.mkdtemp(prefix="leuk-tests-cache-")
os.environ["LEUK_CACHE_DIR"] = _SESSION_CACHE

import pytest  # noqa: E402

from tests.helpers import compose_config, data_dir  # noqa: E402

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
