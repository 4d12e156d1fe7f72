"""One tiny training run per test session, shared by the evaluation and prediction tests."""

from __future__ import annotations

from pathlib import Path

from leuk.cli.train import train
from tests.helpers import TINY, compose_config

_RUNS: dict[str, Path] = {}


def tiny_run(root: Path) -> Path:
    """The run folder of a 1-epoch run on the tiny synthetic set (no logger), trained on first use."""
    if "run" not in _RUNS:
        out = root / "tiny_run"
        train(compose_config([*TINY, "trainer.max_epochs=1", "logger=none"], output_dir=out))
        _RUNS["run"] = out
    return _RUNS["run"]
