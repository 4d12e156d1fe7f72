"""The suite's own setup: under pytest-xdist (``-n auto`` in pyproject.toml) each worker runs torch
on one intra-op thread, so two workers on 2 cores do not spin against each other (with each
worker's default two threads the suite took 12 min 30 s instead of about 4 min), and a green run
leaves no temporary folders behind."""

from __future__ import annotations

import os

import pytest
import torch


def test_an_xdist_worker_runs_torch_on_one_thread() -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.skip("runs in one process (no pytest-xdist worker): torch keeps its threads")
    assert os.environ.get("OMP_NUM_THREADS") == "1"
    assert torch.get_num_threads() == 1


def test_a_passing_test_leaves_no_temporary_folder(request: pytest.FixtureRequest) -> None:
    # CI runs share one disk; a full run kept about 2.2 GB of tmp_path folders (three VGG16
    # weights files among them) and once filled the disk mid-suite.
    assert request.config.getini("tmp_path_retention_policy") == "failed"
