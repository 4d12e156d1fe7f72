"""The composition root: every object of a run, built from the composed config in one place.

``build_run(cfg)`` reads top to bottom: the DataModule (its source, split, augmentation and
preprocessing built and handed in), the network (normalization its first layer), the loss (class
weights from the set-up DataModule), the LightningModule, the callbacks, the loggers, the Trainer.
Nothing is patched after construction, and the config is not changed: what depends on the data
(a split without validation part) is decided here, as arguments.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import lightning as L
import torch
from hydra.utils import get_class, instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from leuk.callbacks import (
    CheckpointInfo,
    LossSchedule,
    TestOutputs,
    ThroughputMeter,
    TwoPhaseFinetuning,
    backbone_param_groups,
)
from leuk.data.transforms import build_augmentation
from leuk.metrics import classification_metrics
from leuk.models.module import Classifier
from leuk.models.normalize import Normalized
from leuk.models.registry import backbone_phase_parameters, create_model
from leuk.preprocess.pipeline import build_preprocess
from leuk.utils.instantiate import instantiate_callbacks, instantiate_loggers

log = logging.getLogger(__name__)


def plain(node: Any) -> Any:
    """A config node as plain containers (resolved); anything else as it is."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node


def build_datamodule(cfg: DictConfig, **overrides: Any) -> Any:
    """The DataModule of ``cfg.data``, with the run's seed, training augmentation and preprocessing
    (and ``overrides`` of its arguments, e.g. the benchmark's batch size)."""
    return instantiate(
        cfg.data,
        seed=cfg.seed,
        train_transform=build_augmentation(
            cfg.augmentation.get("transforms"),
            seed=cfg.seed,
            background=cfg.augmentation.get("background"),
            stain=cfg.augmentation.get("stain"),
        ),
        preprocess=build_preprocess(cfg.preprocess.get("steps")),
        **overrides,
    )


def build_net(model_cfg: Mapping[str, Any], num_classes: int, image_size: int) -> Normalized:
    """The registered architecture ``model_cfg.name`` for ``num_classes`` classes, behind its input
    normalization (``net.body`` is the architecture). ``model.compile`` is not applied here (see
    ``build_module``)."""
    model = plain(model_cfg)
    body = create_model(
        model["name"],
        num_classes,
        image_size=image_size,
        pretrained=model.get("pretrained", False),
        weights=model.get("weights"),
        **(model.get("arch") or {}),
    )
    channels_last = bool(model.get("channels_last", False))
    if channels_last:
        body = body.to(memory_format=torch.channels_last)
    return Normalized(
        body, model.get("mean", (0.0, 0.0, 0.0)), model.get("std", (1.0, 1.0, 1.0)), channels_last
    )


def build_criterion(loss_cfg: Mapping[str, Any], class_weights: list[float] | None = None) -> nn.Module:
    """The loss from config; with ``class_weights`` (data.balance=class_weights), weighted per class
    through the loss's own argument (``weight`` for cross-entropy, ``alpha`` for focal losses)."""
    if not class_weights:
        return instantiate(loss_cfg)
    params = inspect.signature(get_class(loss_cfg["_target_"])).parameters
    if "weight" in params:
        return instantiate(loss_cfg, weight=torch.tensor(class_weights, dtype=torch.float32))
    if "alpha" in params:
        return instantiate(loss_cfg, alpha=list(class_weights))
    raise ValueError(f"data.balance=class_weights: loss {loss_cfg['_target_']} takes no per-class weights")


def backbone_phase_names(model_cfg: Mapping[str, Any], net: nn.Module) -> list[str]:
    """The LightningModule's parameters the two backbone phases act on; [] for one phase.

    The backbone's own classifier (a timm model built with classes) is left out: it is new and
    trains from the start. So are parameters the architecture itself freezes, which stay frozen.
    """
    freeze = int(model_cfg.get("freeze_backbone_epochs", 0) or 0)
    scale = float(model_cfg.get("backbone_lr_scale", 1.0))
    if freeze < 0 or scale < 0:
        raise ValueError("model.freeze_backbone_epochs and model.backbone_lr_scale must be >= 0")
    if freeze == 0 and scale == 1.0:
        return []
    if not isinstance(getattr(net, "backbone", None), nn.Module):
        raise ValueError(
            f"model '{model_cfg['name']}' has no `backbone` to freeze or give its own learning rate: "
            "set model.freeze_backbone_epochs=0 and model.backbone_lr_scale=1.0"
        )
    # The same parameters leuk.models.registry.check_weights_policy checks for random weights.
    return [f"net.{n}" for n in backbone_phase_parameters(net)]


def scheduler_monitor(cfg: DictConfig, has_val: bool) -> str:
    """The metric the scheduler watches: where nothing is validated, a scheduler watching a ``val/``
    metric (a plateau scheduler) watches the training loss; Lightning would stop otherwise."""
    monitor = str(cfg.scheduler.get("monitor") or "val/loss")
    return "train/loss" if not has_val and monitor.startswith("val/") else monitor


def build_module(cfg: DictConfig, datamodule: Any, validated: bool | None = None) -> Classifier:
    """The LightningModule for ``cfg``, sized by the set-up ``datamodule`` (classes, input size,
    class weights when ``data.balance=class_weights``). ``validated``: whether the fit validates
    (default: whether the split has a validation part)."""
    net = build_net(cfg.model, datamodule.num_classes, datamodule.image_size)
    names = backbone_phase_names(cfg.model, net)
    optimizer = instantiate(cfg.optimizer)
    param_groups = None
    if names:
        lr = optimizer.keywords.get("lr") if isinstance(optimizer, partial) else None
        if lr is None:
            raise ValueError("model.backbone_lr_scale / freeze_backbone_epochs need optimizer.lr to be set")
        backbone_lr = float(lr) * float(cfg.model.get("backbone_lr_scale", 1.0))
        param_groups = partial(backbone_param_groups, names=names, backbone_lr=backbone_lr)
    sched = cfg.scheduler
    return Classifier(
        net=net,
        criterion=build_criterion(cfg.loss, datamodule.class_weights),
        optimizer=optimizer,
        scheduler=instantiate(sched.scheduler) if sched.get("scheduler") else None,
        scheduler_interval=sched.get("interval", "epoch"),
        scheduler_monitor=scheduler_monitor(cfg, datamodule.has_val if validated is None else validated),
        scheduler_frequency=int(sched.get("frequency", 1)),
        metrics=classification_metrics(datamodule.num_classes, "", datamodule.class_names),
        class_names=datamodule.class_names,
        param_groups=param_groups,
        compile=bool(cfg.model.get("compile", False)),
    )


def checkpoint_info(cfg: DictConfig, datamodule: Any) -> dict[str, Any]:
    """What a checkpoint carries to rebuild the network without Hydra (plain values)."""
    return {
        "model": plain(cfg.model),
        "num_classes": int(datamodule.num_classes),
        "image_size": int(datamodule.image_size),
        "class_names": list(datamodule.class_names),
        # The steps images went through before this model saw them: evaluation and prediction
        # must repeat them, even where the run's Hydra config is not at hand.
        "preprocess_steps": plain(cfg.preprocess.get("steps")),
    }


def build_loggers(cfg: DictConfig) -> list[Logger]:
    return instantiate_loggers(cfg.get("logger"))


def build_callbacks(
    cfg: DictConfig, datamodule: Any, module: Classifier, have_logger: bool
) -> list[L.Callback]:
    """The configured callbacks, then leuk's own (see ``leuk.callbacks``).

    A protocol with no validation part (data.split.val=0) keeps the last epoch's weights: the
    checkpoint monitors nothing and keeps one file, and there is no early stopping.
    """
    overrides: dict[str, dict[str, Any]] = {}
    skip: tuple[str, ...] = ()
    if not datamodule.has_val:
        log.warning(
            "the split has no validation part: checkpoints keep the last epoch, early stopping is off, "
            "and schedulers monitor the training loss"
        )
        overrides["model_checkpoint"] = {"monitor": None, "save_top_k": 1}
        skip = ("early_stopping",)
    callbacks = instantiate_callbacks(
        cfg.get("callbacks"),
        have_logger=have_logger,
        progress_bar=cfg.trainer.get("enable_progress_bar", True),
        overrides=overrides,
        skip=skip,
    )
    freeze = int(cfg.model.get("freeze_backbone_epochs", 0) or 0)
    if freeze > 0:
        callbacks.append(TwoPhaseFinetuning(backbone_phase_names(cfg.model, module.net), freeze))
    callbacks += [
        LossSchedule(),
        TestOutputs(cfg.paths.output_dir, write_plots=bool(cfg.get("plots", True))),
        CheckpointInfo(checkpoint_info(cfg, datamodule)),
        ThroughputMeter(),
    ]
    return callbacks


def build_trainer(cfg: DictConfig, callbacks: list[L.Callback], loggers: list[Logger]) -> L.Trainer:
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


@dataclass
class Run:
    """Every object of one run (``build_run``)."""

    datamodule: Any
    module: Classifier
    callbacks: list[L.Callback]
    loggers: list[Logger]
    trainer: L.Trainer

    def callback(self, kind: type[L.Callback]) -> Any:
        """The run's callback of type ``kind``."""
        return next(c for c in self.callbacks if isinstance(c, kind))

    @property
    def test_outputs(self) -> TestOutputs:
        return self.callback(TestOutputs)

    @property
    def throughput(self) -> ThroughputMeter:
        return self.callback(ThroughputMeter)


def build_run(cfg: DictConfig) -> Run:
    """The run of ``cfg``; the DataModule is set up (the module is sized by it)."""
    datamodule = build_datamodule(cfg)
    datamodule.setup()
    module = build_module(cfg, datamodule)
    loggers = build_loggers(cfg)
    callbacks = build_callbacks(cfg, datamodule, module, have_logger=bool(loggers))
    trainer = build_trainer(cfg, callbacks, loggers)
    return Run(datamodule, module, callbacks, loggers, trainer)
