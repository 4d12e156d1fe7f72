"""User errors: a config, data or checkpoint that cannot run, as opposed to a run that failed.

Every error leuk raises for bad input derives from ``UserError``: the configuration check
(``leuk.config.validate.ConfigError``), the data (``leuk.data.sources.DataError``), checkpoints
(``leuk.checkpoints.CheckpointError``), model choices and weights (``leuk.models.registry``),
augmentation and preprocessing settings. Its message names the key or file and the fix. The
commands print it once, without a traceback, and exit with its ``exit_code`` (``leuk.cli.errors``);
``task_wrapper`` records no ``failed.json`` for it, since nothing ran.
"""

from __future__ import annotations

from typing import ClassVar


class UserError(Exception):
    """Input that cannot run (not a bug, not a failed run): the message says what to change."""

    # The command's exit status (a config error: 2, as for a command-line usage error).
    exit_code: ClassVar[int] = 1


class UserConfigError(UserError):
    """A config key, value or combination of values that cannot run."""

    exit_code: ClassVar[int] = 2


def user_error_in(error: BaseException | None) -> UserError | None:
    """``error`` if it is a ``UserError``, else the first one it was raised from (``raise ... from``):
    Hydra's ``instantiate`` wraps a constructor's error in its own ``InstantiationException``. An
    error raised while handling a user error (its ``__context__`` only) is a bug, not a user error."""
    seen: list[BaseException] = []
    while error is not None and not any(error is s for s in seen):
        if isinstance(error, UserError):
            return error
        seen.append(error)
        error = error.__cause__
    return None
