"""Two-phase transfer learning (``model.freeze_backbone_epochs``, ``model.backbone_lr_scale``).

The backbone (without a classifier of its own, and without the parameters the architecture keeps
frozen) is frozen for the first epochs, its BatchNorm layers in eval mode so that their running
statistics neither drift nor give way to batch statistics (Keras's ``trainable=False``), then
trains at ``backbone_lr_scale`` × the learning rate beside the rest at the full rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer


def backbone_param_groups(
    module: nn.Module, names: Sequence[str], backbone_lr: float
) -> list[dict[str, Any]]:
    """The optimizer's groups: "head" (every other trainable parameter) and "backbone" (``names``,
    at ``backbone_lr``).

    The backbone's parameters are in the optimizer from the start, frozen or not: without a
    gradient they are skipped (weight decay and momentum included) until they are released, and a
    scheduler built now schedules both groups.
    """
    backbone = set(names)
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad or n in backbone]
    return [
        {"params": [p for n, p in named if n not in backbone], "name": "head"},
        {"params": [p for n, p in named if n in backbone], "name": "backbone", "lr": backbone_lr},
    ]


class TwoPhaseFinetuning(BaseFinetuning):
    """Freezes the parameters ``names`` (of the LightningModule) and the BatchNorm layers of
    ``pl_module.net.backbone`` before epoch ``freeze_epochs``, and releases them from then on."""

    def __init__(self, names: Sequence[str], freeze_epochs: int) -> None:
        super().__init__()
        self.names = list(names)
        self.freeze_epochs = int(freeze_epochs)
        self.frozen = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # DDP wraps the model before the first epoch, every parameter still trainable: parameters
        # frozen later get no gradient, which DDP only tolerates when told to look for them.
        if stage == "fit" and self.freeze_epochs > 0:
            ddp_kwargs = getattr(trainer.strategy, "_ddp_kwargs", None)
            if ddp_kwargs is not None and not ddp_kwargs.get("find_unused_parameters", False):
                raise ValueError(
                    "model.freeze_backbone_epochs > 0 under DDP needs "
                    "trainer.strategy=ddp_find_unused_parameters_true"
                )
        super().setup(trainer, pl_module, stage)

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        # Nothing yet: DDP, which wraps the model after this hook, leaves out of its gradient
        # synchronization every parameter frozen when it wraps. Freezing starts with the first
        # epoch (finetune_function).
        pass

    def finetune_function(self, pl_module: L.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        self.apply(pl_module, epoch)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # A run resumed from a mid-epoch checkpoint starts without on_train_epoch_start; and
        # Lightning switches the whole module back to training after every validation.
        self.apply(pl_module, trainer.current_epoch)

    def apply(self, pl_module: L.LightningModule, epoch: int) -> None:
        """The phase of ``epoch``: parameters frozen or not, frozen BatchNorm layers in eval mode."""
        frozen = epoch < self.freeze_epochs
        if frozen != self.frozen:
            names = set(self.names)
            for name, p in pl_module.named_parameters():
                if name in names:
                    p.requires_grad_(not frozen)
            self.frozen = frozen
            if not frozen and pl_module.training:
                pl_module.net.backbone.train()
        if frozen and pl_module.training:
            for m in pl_module.net.backbone.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
