"""How the commands report a user error (``leuk.utils.errors.UserError``): once, without a traceback.

Hydra would print an error raised by a task with its traceback, after ``task_wrapper`` logged it
with the same traceback: 40 to 230 lines for a typo. ``user_errors`` prints the message alone to
stderr and exits with the error's status (1; 2 for a config error). ``HYDRA_FULL_ERROR=1`` keeps
the traceback, as it does for Hydra's own errors. In a multirun the job's log records the message
and the sweep goes on with its other jobs; Hydra then stops the sweep with the message, once.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from hydra.errors import CompactHydraException

from leuk.utils.errors import UserError, user_error_in

log = logging.getLogger(__name__)

# Hydra's own switch for full tracebacks; honoured for leuk's user errors too.
FULL_ERROR_ENV = "HYDRA_FULL_ERROR"


class JobUserError(CompactHydraException):
    """A job of a multirun stopped by a user error: Hydra prints this message alone, no traceback."""


def full_error() -> bool:
    return os.environ.get(FULL_ERROR_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def format_user_error(prog: str, error: UserError) -> str:
    return f"{prog}: error: {error}"


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@contextmanager
def user_errors(prog: str) -> Iterator[None]:
    """Around a command's body: a user error (or an error raised from one) is printed as
    ``<prog>: error: <message>`` and ends the process with its exit status; any other error
    propagates unchanged (a real failure keeps its traceback and its ``failed.json``)."""
    try:
        yield
    except Exception as error:
        user = user_error_in(error)
        if user is None or full_error():
            raise
        message = format_user_error(prog, user)
        if _in_multirun():
            job = _job_label()
            log.error("%s%s", job, message)
            raise JobUserError(f"{job}{message}") from None
        print(message, file=sys.stderr)
        raise SystemExit(user.exit_code) from None


def _job_label() -> str:
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    return f"job {hc.job.num} ({' '.join(hc.overrides.task) or 'no overrides'}): "
