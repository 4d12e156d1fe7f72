"""``Classifier``: the one LightningModule, wrapping any registered architecture.

It owns what is common to every paper: the loss, the optimizer and scheduler from config, input
scaling and normalization on the device, and one metric collection per stage. The architecture is
a plain ``nn.Module`` (``self.net``) that knows nothing of Lightning.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix

from leuk.metrics import classification_metrics
from leuk.models.registry import create_model


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


class Classifier(L.LightningModule):
    def __init__(
        self,
        model: Mapping[str, Any],
        loss: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None,
        num_classes: int,
        class_names: list[str],
        image_size: int,
    ) -> None:
        super().__init__()
        model, loss, optimizer, scheduler = (_plain(c) for c in (model, loss, optimizer, scheduler))
        # Plain containers only: the checkpoint then rebuilds this module without Hydra.
        self.save_hyperparameters(
            {
                "model": model,
                "loss": loss,
                "optimizer": optimizer,
                "scheduler": scheduler,
                "num_classes": num_classes,
                "class_names": list(class_names),
                "image_size": image_size,
            }
        )
        self.model_name = model["name"]
        net = create_model(
            model["name"],
            num_classes,
            image_size=image_size,
            pretrained=model.get("pretrained", False),
            weights=model.get("weights"),
            **model.get("arch", {}),
        )
        self.channels_last = bool(model.get("channels_last", False))
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.net: nn.Module = net
        # The compiled wrapper is kept outside the module tree, so checkpoints hold the plain
        # architecture's keys and load with or without compile.
        compiled = torch.compile(net) if model.get("compile", False) else net
        object.__setattr__(self, "_forward_net", compiled)
        self.criterion = instantiate(loss)
        mean = torch.tensor(model.get("mean", (0.0, 0.0, 0.0)), dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(model.get("std", (1.0, 1.0, 1.0)), dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.train_metrics = classification_metrics(num_classes, "train/")
        self.val_metrics = classification_metrics(num_classes, "val/")
        self.test_metrics = classification_metrics(num_classes, "test/")
        self.test_confusion = MulticlassConfusionMatrix(num_classes)
        self.test_confusion_matrix: list[list[int]] | None = None

    # ------------------------------------------------------------ data path
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """uint8 CHW → float in [0, 1] → normalized, on the device (4× less to copy than float)."""
        x, y = batch
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_net(x)

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.criterion(logits, y)
        if stage == "train":
            # Architecture-specific penalties (e.g. MobileNet_M's L1 on its dense weights).
            extra = getattr(self.net, "regularization_loss", None)
            if callable(extra):
                loss = loss + extra()
        probs = logits.detach().float().softmax(dim=1)
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(probs, y)
        self.log(
            f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True, prog_bar=True, batch_size=len(y)
        )
        self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=len(y))
        if stage == "test":
            self.test_confusion.update(probs.argmax(dim=1), y)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def on_test_epoch_start(self) -> None:
        self.test_confusion.reset()

    def on_test_epoch_end(self) -> None:
        self.test_confusion_matrix = self.test_confusion.compute().long().tolist()

    # ------------------------------------------------------------ optimization
    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = instantiate(self.hparams.optimizer)(params=params)
        sched_cfg = self.hparams.scheduler or {}
        if not sched_cfg.get("scheduler"):
            return optimizer
        scheduler = instantiate(sched_cfg["scheduler"])(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "interval": sched_cfg.get("interval", "epoch"),
                "monitor": sched_cfg.get("monitor", "val/loss"),
            },
        }

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["leuk_model_name"] = self.model_name

    @classmethod
    def from_checkpoint(cls, path: str, map_location: str | torch.device = "cpu") -> Classifier:
        """Rebuild from a checkpoint without fetching any pretrained weights again."""
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
        hp = dict(ckpt["hyper_parameters"])
        hp["model"] = {**hp["model"], "pretrained": False, "weights": None}
        module = cls(**hp)
        module.load_state_dict(ckpt["state_dict"])
        return module
