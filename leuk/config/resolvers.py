"""OmegaConf resolvers used by the configs (registered on ``import leuk``)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from omegaconf import OmegaConf

# One token per process: every resolution of a run's folder name in this process agrees, and two
# runs started in the same second (even on two machines sharing a disk) get different folders.
_RUN_TOKEN = secrets.token_hex(3)


def _user_cache() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "leuk")


def _mixed_precision() -> str:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "16-mixed"


def register_resolvers() -> None:
    """Register ``leuk.*`` resolvers; safe to call more than once."""
    resolvers = {
        "leuk.run_token": lambda: _RUN_TOKEN,
        "leuk.user_cache": _user_cache,
        "leuk.mixed_precision": _mixed_precision,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
