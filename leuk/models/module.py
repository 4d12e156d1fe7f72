"""``Classifier``: the one LightningModule, around a built network.

It receives everything built (``leuk.composition.build_module``): the network (normalization
included, ``leuk.models.normalize``), the loss, the optimizer and scheduler as partials, and a metric
collection it clones per stage. What changes with the epoch (two-phase fine-tuning, the loss
schedule) and what happens to the test outputs are callbacks (``leuk.callbacks``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric, MetricCollection


class Classifier(L.LightningModule):
    def __init__(
        self,
        net: nn.Module,
        criterion: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        *,
        scheduler_interval: str = "epoch",
        scheduler_monitor: str = "val/loss",
        scheduler_frequency: int = 1,
        metrics: MetricCollection | None = None,
        class_names: Sequence[str] = (),
        param_groups: Callable[[nn.Module], list[dict[str, Any]]] | None = None,
        compile: bool = False,
    ) -> None:
        """``param_groups(module)``: the optimizer's parameter groups, where they are not one group
        of every trainable parameter (``leuk.callbacks.finetuning.backbone_param_groups``)."""
        super().__init__()
        self.net = net
        self.criterion = criterion
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_settings = {
            "interval": scheduler_interval,
            "monitor": scheduler_monitor,
            "frequency": scheduler_frequency,
        }
        self.param_groups = param_groups
        self.class_names = list(class_names)
        # The compiled wrapper is kept outside the module tree, so checkpoints hold the plain
        # network's keys and load with or without compile.
        object.__setattr__(self, "_forward_net", torch.compile(net) if compile else net)
        template = metrics if metrics is not None else MetricCollection({})
        self.train_metrics = template.clone(prefix="train/")
        self.val_metrics = template.clone(prefix="val/")
        self.test_metrics = template.clone(prefix="test/")
        # The epoch loss is a MeanMetric weighted by images: exact under DDP with uneven shards, and
        # the same on every rank, so all ranks pick the same best checkpoint. Like the metrics, it is
        # computed in the epoch-end hooks (``_log_epoch_metrics``) and logged as a number.
        self.train_mean_loss, self.val_mean_loss, self.test_mean_loss = (
            MeanMetric(),
            MeanMetric(),
            MeanMetric(),
        )
        self._metrics_pending: set[str] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_net(x)

    def _step(self, batch: Any, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self(x)
        loss = self.criterion(logits, y)
        # Architecture-specific penalties (e.g. MobileNet_M's L1 on its dense weights), in every
        # stage: Keras's val_loss includes them, and early stopping and the plateau schedule of
        # the papers that use them watch that loss.
        extra = getattr(self.net, "regularization_loss", None)
        if callable(extra):
            loss = loss + extra()
        probs = logits.detach().float().softmax(dim=1)
        getattr(self, f"{stage}_metrics").update(probs, y)
        self._metrics_pending.add(stage)
        getattr(self, f"{stage}_mean_loss").update(loss.detach(), weight=len(y))
        if stage == "train":
            self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(y))
        return loss, probs

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")[0]

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        # What leuk.callbacks.TestOutputs keeps of each batch.
        _, probs = self._step(batch, "test")
        return {"probs": probs, "targets": batch[1].detach()}

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Softmax probabilities (N×C) of a batch of 0–255 images, ``(images, labels)`` or images."""
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self(x).float().softmax(dim=1)

    def _log_epoch_metrics(self, stage: str) -> None:
        """Compute (synchronized across ranks), log and reset one stage's metrics and epoch loss.

        Computed here, in a hook every rank runs at the same point, and logged as numbers, never as
        metric objects: Lightning computes a logged metric object (a collective under DDP) when its
        value is first read, and the first reader can be code on rank 0 alone (the progress bar at
        the end of a training epoch), which then waits in a collective the other ranks never join.
        """
        if stage not in self._metrics_pending:
            return
        metrics = getattr(self, f"{stage}_metrics")
        mean_loss = getattr(self, f"{stage}_mean_loss")
        values = metrics.compute()
        loss = mean_loss.compute()
        metrics.reset()
        mean_loss.reset()
        self._metrics_pending.discard(stage)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        # Confusion counts are integers; Lightning's epoch reduction wants floats.
        self.log_dict({k: v.float() for k, v in values.items()}, on_step=False, on_epoch=True)

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise RuntimeError("this Classifier was built without an optimizer (for inference only)")
        params = (
            self.param_groups(self)
            if self.param_groups
            else [p for p in self.parameters() if p.requires_grad]
        )
        optimizer = self.optimizer_factory(params=params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, **self.scheduler_settings}}
