"""``task_wrapper``: whatever happens in a task, the experiment trackers are closed cleanly."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def finish_wandb(exit_code: int = 0) -> None:
    """Finish the active W&B run, if any (a multirun's next job then starts a new one)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        log.info("closing the W&B run (exit code %d)", exit_code)
        wandb.finish(exit_code=exit_code)


def task_wrapper(fn: F) -> F:
    """Log a failure with its traceback, re-raise it, and always finish the W&B run."""

    @functools.wraps(fn)
    def wrap(*args: Any, **kwargs: Any) -> Any:
        failed = True
        try:
            result = fn(*args, **kwargs)
            failed = False
            return result
        except Exception:
            log.exception("the task failed")
            raise
        finally:
            finish_wandb(exit_code=1 if failed else 0)

    return wrap  # type: ignore[return-value]
