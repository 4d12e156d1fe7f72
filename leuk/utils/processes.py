"""Whether the process that left a file behind (a run folder's lock, a cache's temporary folder) is
still running: by its pid on this machine, and on Linux by when that pid's process started, so that
a pid the system has since given to another process is not mistaken for the writer."""

from __future__ import annotations

import os
import socket
from functools import cache
from pathlib import Path

# /proc/stat's boot time has whole seconds: two readings of one process's start time differ by less.
START_TIME_TOLERANCE_S = 1.0


def hostname() -> str:
    return socket.gethostname()


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this machine (another user's included)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


@cache
def _boot_time() -> float | None:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), or None where /proc cannot tell."""
    boot = _boot_time()
    if boot is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        # The command name (field 2) is in parentheses and may hold spaces; field 22 is the start
        # time in clock ticks after boot, the 20th field after the name.
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def same_process_alive(pid: int, started: float | None) -> bool:
    """Whether process ``pid`` of this machine, which started at ``started`` (as
    ``process_start_time`` gave it then; None: unknown), still runs."""
    if not pid_alive(pid):
        return False
    now_started = process_start_time(pid)
    if started is None or now_started is None:
        return True  # cannot tell a reused pid apart: assume the writer is alive
    return abs(now_started - started) <= START_TIME_TOLERANCE_S
