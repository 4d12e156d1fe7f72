"""Temporary folders of the caches (decoded images, lesion patches, generated synthetic data): an
entry is written in ``.tmp_<host>_<pid>_<random>`` beside its final place and published by one
rename, so a writer killed mid-write leaves only such a folder, which a later run removes.

A folder is removed when it is certainly no live writer's: its writer ran on this machine and has
exited (its pid is gone, or now belongs to a process that started later), or, whichever machine
wrote it, nothing in it has changed for ``STALE_AFTER_S``. Two runs sharing a cache (on one
machine or on a shared file system) therefore never remove each other's folder while it is being
written: a writer on another machine is recognized only by age, and a writer keeps touching its
files until it renames the folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from leuk.utils.processes import hostname, pid_alive

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp_"
# A writer on another machine cannot be asked whether it runs: its folder goes once untouched this
# long. Writing an entry takes minutes and touches its files throughout, so a day leaves a wide
# margin (a suspended writer is the one case this would remove under it).
STALE_AFTER_S = 24 * 3600.0


def make_temp_dir(root: Path) -> Path:
    """A new temporary folder in ``root`` named after this machine and process."""
    return Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{hostname()}_{os.getpid()}_", dir=root))


def _last_change(path: Path) -> float:
    """The newest modification time of the folder and the files directly in it."""
    times = [path.stat().st_mtime]
    for child in path.iterdir():
        with contextlib.suppress(OSError):  # removed meanwhile
            times.append(child.stat().st_mtime)
    return max(times)


def _stale(path: Path, host: str, now: float, stale_after_s: float) -> str | None:
    """Why ``path`` belongs to no live writer, or None."""
    rest = path.name[len(TMP_PREFIX) :]
    if rest.startswith(f"{host}_"):
        pid = rest[len(host) + 1 :].split("_", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            return f"its writer (pid {pid} on this machine) has exited"
    try:
        age = now - _last_change(path)
    except OSError:
        return None  # being removed or renamed by its writer right now
    if age > stale_after_s:
        return f"unchanged for {age / 3600:.0f} h"
    return None


def remove_stale_temp_dirs(
    root: Path, *, stale_after_s: float = STALE_AFTER_S, now: float | None = None
) -> list[Path]:
    """Remove the temporary folders in ``root`` that no live writer owns (see the module); return
    them."""
    if not root.is_dir():
        return []
    host, now = hostname(), time.time() if now is None else now
    removed = []
    for path in sorted(root.glob(f"{TMP_PREFIX}*")):
        if not path.is_dir():
            continue
        why = _stale(path, host, now, stale_after_s)
        if why is not None:
            log.info("removing the temporary cache folder %s: %s", path, why)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
