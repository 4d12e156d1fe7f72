"""``task_wrapper``: whatever happens in a task, the experiment trackers are closed cleanly, and a
failed run leaves ``failed.json`` in its folder so that ``leuk.report`` can count it. A user error
(``leuk.utils.errors.UserError``: a config, data or checkpoint that cannot run) is not a failed
run: nothing ran, so it leaves no ``failed.json``, and the command prints it (``leuk.cli.errors``)."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from leuk.utils.errors import user_error_in

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

FAILED_FILE = "failed.json"


def finish_wandb(exit_code: int = 0) -> None:
    """Finish the active W&B run, if any (a multirun's next job then starts a new one)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        log.info("closing the W&B run (exit code %d)", exit_code)
        wandb.finish(exit_code=exit_code)


def _hydra_overrides() -> list[str] | None:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return list(HydraConfig.get().overrides.task)


def _select(cfg: DictConfig, key: str) -> Any:
    # A broken config may be why the task failed: a value that cannot resolve is recorded as absent.
    try:
        value = OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
    except Exception:
        return None
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value


def _run_dir(cfg: DictConfig) -> Path | None:
    out = _select(cfg, "paths.output_dir")
    if out:
        return Path(out)
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None


def write_failure(cfg: DictConfig, error: BaseException, task: str | None = None) -> Path | None:
    """Write ``<run dir>/failed.json``; never raises (the task's own error is the one to report)."""
    try:
        run_dir = _run_dir(cfg)
        if run_dir is None:
            return None
        record = {
            "status": "failed",
            # Which entry point failed: leuk.report counts training runs, not a failed evaluation.
            "task": task,
            "error": f"{type(error).__name__}: {error}",
            "overrides": _hydra_overrides(),
            # Enough to place the run in the report's table when .hydra/ is absent (compose API).
            "model": _select(cfg, "model.name"),
            "image_size": _select(cfg, "data.image_size"),
            "seed": _select(cfg, "seed"),
            "rank": int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0))),
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "traceback": traceback.format_exception(type(error), error, error.__traceback__),
        }
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / FAILED_FILE
        # Write then rename: DDP ranks failing together must not leave a half-written file.
        tmp = path.with_name(f".{FAILED_FILE}.{os.getpid()}")
        tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
        tmp.replace(path)
        return path
    except Exception:
        log.exception("could not write %s", FAILED_FILE)
        return None


def _task_name(fn: Callable[..., Any]) -> str:
    # `python -m leuk.train` runs the module as __main__; its spec still says leuk.train.
    spec = getattr(sys.modules.get(fn.__module__), "__spec__", None)
    return f"{spec.name if spec is not None else fn.__module__}.{fn.__qualname__}"


def _config_argument(args: tuple[Any, ...], kwargs: dict[str, Any]) -> DictConfig | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, DictConfig):
            return value
    return None


def task_wrapper(fn: F | None = None, *, task: str | None = None) -> Any:
    """Log a failure with its traceback, record it in ``failed.json``, re-raise it, and always
    finish the W&B run. A user error is re-raised alone: the command reports it, once.

    ``@task_wrapper`` records the task as the function's dotted name; ``@task_wrapper(task=...)``
    records a fixed name, so that a function that moved (``leuk.train.train`` to ``leuk.cli``)
    keeps the name that ``leuk.report`` and older ``failed.json`` files know it by.
    """
    if fn is None:
        return functools.partial(task_wrapper, task=task)

    @functools.wraps(fn)
    def wrap(*args: Any, **kwargs: Any) -> Any:
        failed = True
        try:
            result = fn(*args, **kwargs)
            failed = False
            return result
        except Exception as error:
            if user_error_in(error) is not None:
                raise
            log.exception("the task failed")
            cfg = _config_argument(args, kwargs)
            if cfg is not None:
                write_failure(cfg, error, task=task or _task_name(fn))
            raise
        finally:
            finish_wandb(exit_code=1 if failed else 0)

    return wrap  # type: ignore[return-value]
