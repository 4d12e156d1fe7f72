"""One run per run folder: a training run refuses a folder that another run is using, or that holds
a finished run, before it writes anything there.

- In use: the folder's ``run.lock`` (created with ``O_EXCL``, so two runs starting together cannot
  both get it) names the pid and machine of the run writing there; it is removed when that run
  ends, failed or not. A lock whose process has exited on this machine (killed: nothing removed
  it) is taken over; one of another machine cannot be checked and is refused with its details.
- Finished: ``metrics.json`` is there. A re-run would overwrite it and ``split.csv``; it is refused
  unless the run resumes from a checkpoint (``ckpt_path=...``) or says ``overwrite=true``.

Only the launching process takes the lock: the DDP ranks Lightning starts (``LOCAL_RANK`` and
``NODE_RANK``), and the tasks of a SLURM or torchrun job other than rank 0 (``SLURM_PROCID``,
``RANK``), run in the folder their rank 0 holds. Other entry points (``leuk.eval`` writing
``eval.json`` into a finished training folder) take no lock and are never refused.

``RefuseUsedRunFolder`` (a Hydra callback of ``conf/train.yaml``) runs the same check before Hydra
writes ``.hydra/`` into the folder of a single run, so that a refused run leaves the finished
run's recorded config and overrides (what ``leuk.report`` groups runs by) as they were.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from leuk.utils.errors import UserError
from leuk.utils.processes import hostname, process_start_time, same_process_alive

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
# What a finished training run leaves (written last, by rank 0).
FINISHED_FILE = "metrics.json"
# The environment variables that give a process its rank; any of them non-zero: not rank 0.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")

# The lock files this process holds (a lock naming this pid but not held here is a dead
# process's whose pid came round again, e.g. pid 1 of a restarted container).
_HELD: set[Path] = set()


class RunFolderError(UserError, RuntimeError):
    """A run folder that another run uses or that holds a finished run. It is not this run's folder:
    nothing is recorded in it (``train`` claims the folder outside ``task_wrapper``, so no
    ``failed.json`` is written)."""


def launching_process() -> bool:
    """Whether this process is the one that launched the run (not a secondary DDP or SLURM rank)."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) != 0:
            return False
    return True


def _read_lock(path: Path) -> dict[str, Any] | None:
    """The lock's record; None when it is gone; an empty record when it cannot be parsed (being
    written this instant, or damaged)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        record = json.loads(text)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _owner_alive(record: dict[str, Any], path: Path) -> bool:
    pid, host = record.get("pid"), record.get("host")
    if not isinstance(pid, int) or not isinstance(host, str):
        return True  # unreadable: someone may be writing it now
    if host != hostname():
        return True  # another machine's process: cannot be checked from here
    if pid == os.getpid():
        return path in _HELD
    started = record.get("pid_started")
    return same_process_alive(pid, started if isinstance(started, (int, float)) else None)


def _describe(record: dict[str, Any]) -> str:
    if not record.get("pid"):
        return "an unreadable lock"
    return f"pid {record.get('pid')} on {record.get('host')}, since {record.get('time', '?')}"


def _in_use_message(run_dir: Path, lock: Path, record: dict[str, Any]) -> str:
    return (
        f"run folder {run_dir} is in use by another run ({_describe(record)}): two runs in one folder "
        "would mix their files. Wait for it to end or choose another folder (hydra.run.dir=...); if no "
        f"run uses it any more (its machine went down), delete {lock}"
    )


def _finished_message(run_dir: Path) -> str:
    return (
        f"run folder {run_dir} holds a finished run ({run_dir / FINISHED_FILE}): running into it again "
        "would overwrite its metrics.json and split.csv. Choose another folder (hydra.run.dir=...), "
        "resume from one of its checkpoints (ckpt_path=...), or replace it with overwrite=true"
    )


def folder_refusal(run_dir: Path, *, overwrite: bool, resume: bool) -> str | None:
    """Why a training run may not start in ``run_dir`` (see the module), or None; checks only."""
    lock = run_dir / LOCK_FILE
    record = _read_lock(lock)
    if record is not None and _owner_alive(record, lock):
        return _in_use_message(run_dir, lock, record)
    if (run_dir / FINISHED_FILE).is_file() and not (overwrite or resume):
        return _finished_message(run_dir)
    return None


class RunLock:
    """The lock of a run folder, held until ``release`` (or the end of a ``with`` block); ``path``
    None: nothing held (a secondary rank)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def release(self) -> None:
        if self.path is None:
            return
        record = _read_lock(self.path)
        if record and record.get("pid") == os.getpid() and record.get("host") == hostname():
            self.path.unlink(missing_ok=True)
        _HELD.discard(self.path)
        self.path = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _create(lock: Path) -> bool:
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    record = {
        "pid": os.getpid(),
        "host": hostname(),
        "pid_started": process_start_time(os.getpid()),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv,
    }
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(record, indent=2) + "\n")
    _HELD.add(lock)
    return True


def claim_run_folder(run_dir: str | Path, *, overwrite: bool = False, resume: bool = False) -> RunLock:
    """Take ``run_dir``'s lock for this run, or raise ``RunFolderError`` (see the module). The
    folder is created if need be; release the lock when the run ends (``with`` does)."""
    if not launching_process():
        return RunLock(None)
    # Resolved: the locks this process holds are known by their path, however it was spelt.
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK_FILE
    # Twice at most: once more after removing a dead run's lock (another run may take it first).
    for _ in range(2):
        if _create(lock):
            break
        record = _read_lock(lock)
        if record is None:
            continue  # released meanwhile
        if _owner_alive(record, lock):
            raise RunFolderError(_in_use_message(run_dir, lock, record))
        # Removed only if it is still the dead run's (not one a run starting now just created).
        if _read_lock(lock) == record:
            log.warning(
                "run folder %s: taking over the lock of a run that ended (%s)", run_dir, _describe(record)
            )
            lock.unlink(missing_ok=True)
    else:
        raise RunFolderError(_in_use_message(run_dir, lock, _read_lock(lock) or {}))
    held = RunLock(lock)
    if (run_dir / FINISHED_FILE).is_file() and not (overwrite or resume):
        held.release()
        raise RunFolderError(_finished_message(run_dir))
    return held


class RefuseUsedRunFolder(Callback):
    """Hydra callback: refuse a single run's folder (``folder_refusal``) before Hydra writes
    ``.hydra/`` into it. ``train()`` takes the lock itself (the compose API runs no callback)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not launching_process():
            return
        run_dir = Path(str(config.hydra.run.dir)).resolve()
        why = folder_refusal(
            run_dir, overwrite=config.get("overwrite") is True, resume=bool(config.get("ckpt_path"))
        )
        if why is not None:
            # Hydra turns a callback's exception into a warning and runs the job anyway; an exit
            # stops it before anything is written.
            raise SystemExit(f"error: {why}")
