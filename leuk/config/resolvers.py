"""OmegaConf resolvers used by the configs (registered on ``import leuk``)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

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


def _hydra_job() -> Any | None:
    """The running job's Hydra config, or None outside a Hydra app (the compose API, tests)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def _wandb_group(task_name: str) -> str:
    """One W&B group per sweep, named after its experiment and sweep configs and its start time (the
    sweep folder's name: every job of the sweep shares it, whichever process runs the job); a
    single run is grouped by its task."""
    from hydra.types import RunMode

    hc = _hydra_job()
    if hc is None or hc.mode != RunMode.MULTIRUN:
        return task_name
    choices = hc.runtime.choices
    label = "-".join(str(c) for c in (choices.get("experiment"), choices.get("sweep")) if c) or task_name
    return f"{label}_{Path(hc.sweep.dir).name}"


def _wandb_tags(tags: Iterable[Any], model: str, seed: Any) -> list[str]:
    """The run's own tags plus what tells the jobs of a sweep apart: model, protocol and seed."""
    out = [str(t) for t in tags or []]
    out += [f"model:{model}", f"seed:{seed}"]
    hc = _hydra_job()
    if hc is not None:
        choices = hc.runtime.choices
        for group in ("experiment", "data", "data/split"):
            if choices.get(group):
                out.append(f"{group.replace('data/', '')}:{choices[group]}")
    # W&B refuses tags longer than 64 characters.
    return list(dict.fromkeys(t[:64] for t in out))


# Group choices the run's name starts with (and their one key that says the same).
_NAMED = ("model", "data", "model.name")


def _wandb_name(model: str, data_root: Any, exclude: Iterable[str]) -> str:
    """``<model>-<data folder>[-<overrides>]``: the command line's overrides (a sweep job's own
    among them) joined by commas, without those of the keys in ``exclude`` (and below them) and
    without the model and data choices, which the name starts with."""
    data = Path(str(data_root)).name if data_root else ""
    name = "-".join(p for p in (str(model), data) if p)
    hc = _hydra_job()
    if hc is None:
        return name
    prefixes = [str(e) for e in exclude or []]
    shown = []
    for override in hc.overrides.task:
        text = str(override).lstrip("+~")
        key = text.split("=", 1)[0]
        if key in _NAMED or any(key == p or key.startswith((f"{p}.", f"{p}/")) for p in prefixes):
            continue
        shown.append(text)
    return f"{name}-{','.join(shown)}" if shown else name


def _help_groups() -> str:
    """The config groups of the running command (``--help``), each with its options: those the
    command's defaults list chose from, without Hydra's own groups and without the private files
    (``_base``, ``_loader``) that options inherit from. The option chosen by default is starred."""
    from hydra.core.global_hydra import GlobalHydra

    hc = _hydra_job()
    if hc is None or not GlobalHydra.instance().is_initialized():
        return ""
    loader = GlobalHydra.instance().config_loader()
    lines = []
    for group, choice in sorted(hc.runtime.choices.items()):
        if group == "hydra" or group.startswith("hydra/"):
            continue
        options = [o for o in sorted(loader.get_group_options(group)) if not o.startswith("_")]
        shown = ", ".join(f"{o}*" if o == choice else o for o in options)
        lines.append(f"  {group}: {shown}" + ("" if choice else "  (none by default)"))
    return "\n".join(lines)


def register_resolvers() -> None:
    """Register ``leuk.*`` resolvers; safe to call more than once."""
    resolvers = {
        "leuk.run_token": lambda: _RUN_TOKEN,
        "leuk.user_cache": _user_cache,
        "leuk.mixed_precision": _mixed_precision,
        "leuk.wandb_group": _wandb_group,
        "leuk.wandb_tags": _wandb_tags,
        "leuk.wandb_name": _wandb_name,
        "leuk.help_groups": _help_groups,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
