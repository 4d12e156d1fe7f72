"""Build callbacks and loggers from their config groups."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

log = logging.getLogger(__name__)

# Callbacks that only make sense with a logger to write to.
NEEDS_LOGGER = ("lightning.pytorch.callbacks.LearningRateMonitor",)
PROGRESS_BARS = ("lightning.pytorch.callbacks.RichProgressBar", "lightning.pytorch.callbacks.TQDMProgressBar")


def instantiate_loggers(cfg: DictConfig | None) -> list[Logger]:
    if not cfg:
        return []
    return [instantiate(node) for node in cfg.values() if node is not None]


def instantiate_callbacks(
    cfg: DictConfig | None,
    *,
    have_logger: bool,
    progress_bar: bool = True,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    skip: Collection[str] = (),
) -> list[L.Callback]:
    """The callbacks of ``cfg`` (name → node; a null node is skipped), each built with its
    ``overrides[name]`` as arguments beside the node's, and without those named in ``skip``."""
    if not cfg:
        return []
    callbacks = []
    for name, node in cfg.items():
        if node is None or name in skip:
            continue
        if node.get("_target_") in NEEDS_LOGGER and not have_logger:
            log.info("callback '%s' skipped: no logger is configured", name)
            continue
        if node.get("_target_") in PROGRESS_BARS and not progress_bar:
            continue
        callbacks.append(instantiate(node, **dict((overrides or {}).get(name, {}))))
    return callbacks
