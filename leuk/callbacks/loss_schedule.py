"""Losses that change with the epoch (``ce_then_focal``) learn it from this callback."""

from __future__ import annotations

from typing import Any

import lightning as L


class LossSchedule(L.Callback):
    """Calls ``pl_module.criterion.set_epoch(epoch)`` where the loss has it, at the start of every
    training, validation and test epoch (and training batch: a run resumed mid-epoch starts
    without an epoch start)."""

    @staticmethod
    def _tell(trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        set_epoch = getattr(getattr(pl_module, "criterion", None), "set_epoch", None)
        if callable(set_epoch):
            set_epoch(trainer.current_epoch)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._tell(trainer, pl_module)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._tell(trainer, pl_module)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._tell(trainer, pl_module)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._tell(trainer, pl_module)
