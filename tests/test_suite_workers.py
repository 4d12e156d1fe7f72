"""The suite's own setup: under pytest-xdist (``-n auto`` in pyproject.toml) each worker runs torch
on one intra-op thread, so two workers on 2 cores do not spin against each other (with each
worker's default two threads the suite took 12 min 30 s instead of about 4 min)."""

from __future__ import annotations

import os

import pytest
import torch


def test_an_xdist_worker_runs_torch_on_one_thread() -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.skip("runs in one process (no pytest-xdist worker): torch keeps its threads")
    assert os.environ.get("OMP_NUM_THREADS") == "1"
    assert torch.get_num_threads() == 1
