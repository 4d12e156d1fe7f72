"""``Classifier``: the one LightningModule, wrapping any registered architecture.

It owns what is common to every paper: the loss, the optimizer and scheduler from config, input
scaling and normalization on the device, and one metric collection per stage. The architecture is
a plain ``nn.Module`` (``self.net``) that knows nothing of Lightning.

What changes with the epoch lives here too: a backbone frozen for the first epochs, then trained at
its own learning rate (``model.freeze_backbone_epochs``, ``model.backbone_lr_scale``), and losses
that switch over (``set_epoch``).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassConfusionMatrix

from leuk.metrics import classification_metrics
from leuk.models.registry import backbone_phase_parameters, create_model


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, (DictConfig, ListConfig)) else cfg


def build_loss(loss: Mapping[str, Any], class_weights: list[float] | None = None) -> nn.Module:
    """The loss from config; with ``class_weights`` (data.balance=class_weights), weighted per class
    through the loss's own argument (``weight`` for cross-entropy, ``alpha`` for focal losses)."""
    if not class_weights:
        return instantiate(loss)
    params = inspect.signature(get_class(loss["_target_"])).parameters
    if "weight" in params:
        return instantiate(loss, weight=torch.tensor(class_weights, dtype=torch.float32))
    if "alpha" in params:
        return instantiate(loss, alpha=list(class_weights))
    raise ValueError(f"data.balance=class_weights: loss {loss['_target_']} takes no per-class weights")


def gather_outputs(parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> dict[str, np.ndarray]:
    """Concatenate (probs, targets, indices) batches, from every DDP rank, sorted by index."""
    local = [tuple(torch.cat(column).numpy() for column in zip(*parts, strict=True))] if parts else []
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Shards differ in size by one image, which all_gather of tensors cannot take.
        gathered: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, local)
        local = [part for rank in gathered for part in rank]
    if not local:
        empty = np.zeros(0, np.int64)
        return {"probs": np.zeros((0, 0), np.float32), "targets": empty, "indices": empty}
    probs, targets, indices = (np.concatenate(column) for column in zip(*local, strict=True))
    order = np.argsort(indices, kind="stable")
    return {"probs": probs[order], "targets": targets[order], "indices": indices[order]}


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
        class_weights: list[float] | None = None,
        preprocess_steps: Any = None,
    ) -> None:
        super().__init__()
        self._backbone_frozen = False
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
                "class_weights": class_weights,
                # The steps images went through before this model saw them: evaluation and
                # prediction must repeat them, even where the run's Hydra config is not at hand.
                "preprocess_steps": _plain(preprocess_steps),
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
        self.criterion = build_loss(loss, class_weights)
        self.freeze_backbone_epochs = int(model.get("freeze_backbone_epochs", 0))
        self.backbone_lr_scale = float(model.get("backbone_lr_scale", 1.0))
        self._backbone_param_names = self._find_backbone_parameters()
        mean = torch.tensor(model.get("mean", (0.0, 0.0, 0.0)), dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(model.get("std", (1.0, 1.0, 1.0)), dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.train_metrics = classification_metrics(num_classes, "train/", class_names)
        self.val_metrics = classification_metrics(num_classes, "val/", class_names)
        self.test_metrics = classification_metrics(num_classes, "test/", class_names)
        self._metrics_pending: set[str] = set()
        # Per-epoch loss and accuracy for the training curves when no CSV logger keeps them.
        self.history: list[dict[str, float]] = []
        # The test set's probabilities, targets and loader indices, gathered from every rank
        # (plots and evaluation need each prediction, not only the metrics).
        self.test_outputs: dict[str, np.ndarray] | None = None
        self._test_parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._test_order: list[int] | None = None
        self._test_seen = 0
        self.test_confusion = MulticlassConfusionMatrix(num_classes)
        self.train_mean_loss = MeanMetric()
        self.val_mean_loss = MeanMetric()
        self.test_mean_loss = MeanMetric()
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
        # Architecture-specific penalties (e.g. MobileNet_M's L1 on its dense weights), in every
        # stage: Keras's val_loss includes them, and early stopping and the plateau schedule of
        # the papers that use them watch that loss.
        extra = getattr(self.net, "regularization_loss", None)
        if callable(extra):
            loss = loss + extra()
        probs = logits.detach().float().softmax(dim=1)
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(probs, y)
        self._metrics_pending.add(stage)
        # The epoch loss is a MeanMetric weighted by images: exact under DDP with uneven shards, and
        # the same on every rank, so all ranks pick the same best checkpoint.
        mean_loss = getattr(self, f"{stage}_mean_loss")
        mean_loss.update(loss.detach(), weight=len(y))
        if stage == "train":
            self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(y))
        self.log(f"{stage}/loss", mean_loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        if stage == "test":
            self.test_confusion.update(probs.argmax(dim=1), y)
            self._keep_test_outputs(probs, y)
        return loss

    def _log_epoch_metrics(self, stage: str) -> dict[str, float]:
        """Compute (synchronized across ranks), log and reset one stage's metrics.

        Logged here rather than as metric objects in ``_step``: per-class and confusion values come
        out of ``compute()`` as a dict, which Lightning's metric-object logging cannot take.
        """
        if stage not in self._metrics_pending:
            return {}
        metrics = getattr(self, f"{stage}_metrics")
        values = metrics.compute()
        metrics.reset()
        self._metrics_pending.discard(stage)
        # Confusion counts are integers; Lightning's epoch reduction wants floats.
        self.log_dict({k: v.float() for k, v in values.items()}, on_step=False, on_epoch=True)
        return {k: float(v) for k, v in values.items()}

    def _record_history(self, stage: str, values: dict[str, float]) -> None:
        if not values:
            return
        loss = float(getattr(self, f"{stage}_mean_loss").compute())
        entry = next((h for h in self.history if h["epoch"] == self.current_epoch), None)
        if entry is None:
            entry = {"epoch": self.current_epoch}
            self.history.append(entry)
        entry[f"{stage}/loss"] = loss
        entry[f"{stage}/accuracy"] = values[f"{stage}/accuracy"]

    def on_train_epoch_end(self) -> None:
        self._record_history("train", self._log_epoch_metrics("train"))

    def on_validation_epoch_end(self) -> None:
        values = self._log_epoch_metrics("val")
        # Only fitting epochs go into the curves (not the post-fit trainer.validate of the best
        # checkpoint, nor the sanity check).
        if not self.trainer.sanity_checking and self.trainer.state.fn == "fit":
            self._record_history("val", values)

    def _keep_test_outputs(self, probs: torch.Tensor, y: torch.Tensor) -> None:
        n = len(y)
        if self._test_order is not None and self._test_seen + n <= len(self._test_order):
            idx = torch.tensor(self._test_order[self._test_seen : self._test_seen + n])
        else:
            idx = torch.arange(self._test_seen, self._test_seen + n)
        self._test_seen += n
        self._test_parts.append((probs.cpu(), y.detach().cpu(), idx))

    def _test_loader_order(self) -> list[int] | None:
        """The dataset indices the test loader yields, in order (this rank's share under DDP)."""
        loaders = self.trainer.test_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        sampler = getattr(loader, "sampler", None)
        return None if sampler is None else [int(i) for i in sampler]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Softmax probabilities (N×C) of a batch (already normalized by on_after_batch_transfer)."""
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self(x).float().softmax(dim=1)

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")
        self.test_confusion_matrix = self.test_confusion.compute().long().tolist()
        self.test_outputs = gather_outputs(self._test_parts)
        self._test_parts = []

    # ------------------------------------------------------------ two-phase training
    def _find_backbone_parameters(self) -> list[str]:
        """Names of the parameters the backbone phases act on (none when there is one phase).

        The backbone's own classifier (a timm model built with classes) is left out: it is new and
        trains from the start. So are parameters the architecture itself freezes, which stay frozen.
        """
        if self.freeze_backbone_epochs < 0 or self.backbone_lr_scale < 0:
            raise ValueError("model.freeze_backbone_epochs and model.backbone_lr_scale must be >= 0")
        if self.freeze_backbone_epochs == 0 and self.backbone_lr_scale == 1.0:
            return []
        if not isinstance(getattr(self.net, "backbone", None), nn.Module):
            raise ValueError(
                f"model '{self.model_name}' has no `backbone` to freeze or give its own learning rate: "
                "set model.freeze_backbone_epochs=0 and model.backbone_lr_scale=1.0"
            )
        # The same parameters leuk.models.registry.check_weights_policy checks for random weights.
        return [f"net.{n}" for n in backbone_phase_parameters(self.net)]

    @property
    def backbone_frozen(self) -> bool:
        return self._backbone_frozen

    def set_backbone_frozen(self, frozen: bool) -> None:
        """Freeze (or release) the backbone's parameters and BatchNorm statistics."""
        names = set(self._backbone_param_names)
        for name, p in self.named_parameters():
            if name in names:
                p.requires_grad_(not frozen)
        self._backbone_frozen = frozen
        if self.training:
            self.train(True)

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        # Lightning switches the whole module back to training after every validation: a frozen
        # backbone's BatchNorm layers must stay in eval mode, or their running statistics drift.
        if mode and self._backbone_frozen:
            for m in self.net.backbone.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def setup(self, stage: str) -> None:
        # DDP wraps the model before the first epoch, every parameter still trainable: parameters
        # frozen later get no gradient, which DDP only tolerates when told to look for them.
        if stage == "fit" and self.freeze_backbone_epochs > 0 and self._backbone_param_names:
            ddp_kwargs = getattr(self.trainer.strategy, "_ddp_kwargs", None)
            if ddp_kwargs is not None and not ddp_kwargs.get("find_unused_parameters", False):
                raise ValueError(
                    "model.freeze_backbone_epochs > 0 under DDP needs "
                    "trainer.strategy=ddp_find_unused_parameters_true"
                )

    def _apply_backbone_phase(self) -> None:
        frozen = self.current_epoch < self.freeze_backbone_epochs
        if frozen != self._backbone_frozen:
            self.set_backbone_frozen(frozen)

    def on_train_epoch_start(self) -> None:
        self._apply_backbone_phase()
        self._set_loss_epoch()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # A run resumed from a mid-epoch checkpoint starts without on_train_epoch_start.
        self._apply_backbone_phase()

    def on_validation_epoch_start(self) -> None:
        self._set_loss_epoch()

    def on_test_epoch_start(self) -> None:
        self._set_loss_epoch()
        self.test_confusion.reset()
        self._test_parts, self._test_seen = [], 0
        self._test_order = self._test_loader_order()

    def _set_loss_epoch(self) -> None:
        # Losses that change with the epoch (ce_then_focal) learn it here.
        set_epoch = getattr(self.criterion, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(self.current_epoch)

    # ------------------------------------------------------------ optimization
    def configure_optimizers(self) -> Any:
        backbone = set(self._backbone_param_names)
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad or n in backbone]
        head_params = [p for n, p in named if n not in backbone]
        backbone_params = [p for n, p in named if n in backbone]
        if backbone_params:
            # Parameters frozen for a phase stay in the optimizer: without a gradient, they are
            # skipped (weight decay and momentum included) until they are released.
            params: Any = [{"params": head_params, "name": "head"}]
            params.append({"params": backbone_params, "name": "backbone"})
        else:
            params = head_params
        optimizer = instantiate(self.hparams.optimizer)(params=params)
        if backbone_params:
            optimizer.param_groups[1]["lr"] = optimizer.defaults["lr"] * self.backbone_lr_scale
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
