"""One run per run folder: a folder in use (its ``run.lock``) or holding a finished run
(``metrics.json``) is refused before anything is written, unless the run resumes or says
``overwrite=true``; a dead run's lock is taken over; DDP's secondary ranks and ``leuk.eval`` are never
refused (tests/test_eval.py evaluates into a finished training folder). None of these tests trains:
``build_run`` is stopped, and reaching it means the folder was accepted."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import leuk.cli.train as train_cli
from leuk.cli.train import train
from leuk.config import config_dir
from leuk.utils.processes import hostname
from tests.helpers import PYTHON, TINY, compose_config, subprocess_env

RUN = [*TINY, "logger=none"]


class Built(Exception):
    """``build_run`` was reached: the run folder was accepted."""


@pytest.fixture
def stop_at_build(monkeypatch: pytest.MonkeyPatch) -> None:
    def built(cfg: object) -> None:
        raise Built("build_run reached")

    monkeypatch.setattr(train_cli, "build_run", built)


def finished_run(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"test/mcc": 0.5}))
    (folder / "split.csv").write_text("path,label,split\n")
    return folder


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def sleeper() -> subprocess.Popen:
    """A live process of this machine, to own a lock."""
    return subprocess.Popen([PYTHON, "-c", "import time; time.sleep(60)"])


def test_rerun_into_a_finished_folder_is_refused_and_leaves_it_as_it_was(
    tmp_path: Path, stop_at_build: None
) -> None:
    run = finished_run(tmp_path / "run")
    before = contents(run)
    with pytest.raises(Exception, match=rf"run folder {re.escape(str(run))} holds a finished run") as info:
        train(compose_config(RUN, output_dir=run))
    assert type(info.value).__name__ == "RunFolderError"
    assert "ckpt_path=" in str(info.value) and "overwrite=true" in str(info.value)
    # Nothing written: no failed.json (the finished run would count as failed), no lock left.
    assert contents(run) == before
    # overwrite=true may replace it; the lock is released when the run fails too.
    with pytest.raises(Built):
        train(compose_config([*RUN, "overwrite=true"], output_dir=run))
    assert not (run / "run.lock").exists()


def test_a_folder_in_use_is_refused_and_a_dead_runs_lock_taken_over(
    tmp_path: Path, stop_at_build: None
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    owner = sleeper()
    try:
        record = {"pid": owner.pid, "host": hostname(), "time": "2025-01-01T00:00:00+00:00"}
        (run / "run.lock").write_text(json.dumps(record))
        with pytest.raises(
            Exception, match=rf"{re.escape(str(run))} is in use by another run \(pid {owner.pid} on"
        ):
            train(compose_config([*RUN, "overwrite=true"], output_dir=run))
    finally:
        owner.kill()
        owner.wait()
    assert json.loads((run / "run.lock").read_text()) == record, "another run's lock was touched"
    assert not (run / "failed.json").exists()
    # Killed: nothing removed its lock. The next run takes it over, and releases it.
    with pytest.raises(Built):
        train(compose_config(RUN, output_dir=run))
    assert not (run / "run.lock").exists()


def test_two_runs_starting_at_once_get_one_lock(tmp_path: Path) -> None:
    """Two processes claim one folder at the same instant: exactly one holds it."""
    script = (
        "import sys, time\n"
        "from leuk.utils.run_folder import RunFolderError, claim_run_folder\n"
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
        "try:\n"
        "    lock = claim_run_folder(sys.argv[1])\n"
        "    print('held', flush=True)\n"
        "    time.sleep(0.5)\n"
        "    lock.release()\n"
        "except RunFolderError as error:\n"
        "    print('refused', error, flush=True)\n"
    )
    start = str(time.time() + 1.0)  # both started by then
    procs = [
        subprocess.Popen(
            [PYTHON, "-c", script, str(tmp_path / "run"), start],
            stdout=subprocess.PIPE,
            text=True,
            env=subprocess_env(),
        )
        for _ in range(2)
    ]
    outputs = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert outputs[0] == "held" and outputs[1].startswith("refused"), outputs
    assert "is in use by another run" in outputs[1]
    assert not (tmp_path / "run" / "run.lock").exists()


def test_secondary_ranks_run_in_the_folder_their_rank_0_holds(
    tmp_path: Path, stop_at_build: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning's DDP launch runs the script again per rank with the same folder (LOCAL_RANK=1):
    such a rank neither takes nor checks the lock."""
    run = finished_run(tmp_path / "run")
    cfg = compose_config(RUN, output_dir=run)
    owner = sleeper()
    try:
        (run / "run.lock").write_text(json.dumps({"pid": owner.pid, "host": hostname()}))
        for variable in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"):
            with monkeypatch.context() as env:
                env.setenv(variable, "1")
                with pytest.raises(Built):
                    train(cfg)
        # Rank 0 of a SLURM job (SLURM_PROCID=0) is the launching process.
        monkeypatch.setenv("SLURM_PROCID", "0")
        with pytest.raises(Exception, match="in use"):
            train(cfg)
    finally:
        owner.kill()
        owner.wait()


def test_resume_may_run_into_a_finished_folder(tmp_path: Path) -> None:
    from leuk.utils.run_folder import RunFolderError, claim_run_folder

    run = finished_run(tmp_path / "run")
    with claim_run_folder(run, resume=True):
        assert (run / "run.lock").is_file()
        with pytest.raises(RunFolderError, match="in use"):  # by this very run
            claim_run_folder(run, resume=True)
    assert not (run / "run.lock").exists()


def test_hydra_does_not_rewrite_a_refused_folder(tmp_path: Path) -> None:
    """``python -m leuk.train hydra.run.dir=<finished run>`` stops before Hydra writes .hydra/
    there (the finished run's recorded config and overrides stay its own)."""
    from hydra.utils import instantiate

    run = finished_run(tmp_path / "run")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfgs = [
            compose("train", overrides=[f"hydra.run.dir={run}", *extra], return_hydra_config=True)
            for extra in ([], ["overwrite=true"])
        ]
    callbacks = [instantiate(c) for c in cfgs[0].hydra.callbacks.values()]
    assert callbacks, "conf/train.yaml lists no Hydra callback"
    with pytest.raises(SystemExit, match=rf"{re.escape(str(run))} holds a finished run"):
        for callback in callbacks:
            callback.on_run_start(config=cfgs[0])
    for callback in callbacks:
        callback.on_run_start(config=cfgs[1])  # overwrite=true: allowed
