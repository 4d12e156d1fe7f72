"""Two-phase transfer learning (``leuk.callbacks.TwoPhaseFinetuning``): the backbone frozen with its
BatchNorm statistics for the first epochs, then trained at its own learning rate.

Moved from tests/test_models.py with the fine-tuning code (issue 16): same assertions, against the
callback instead of the LightningModule."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from omegaconf import DictConfig
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from leuk.callbacks import TwoPhaseFinetuning
from leuk.composition import backbone_phase_names, build_callbacks, build_datamodule, build_module
from leuk.models import create_model
from leuk.models.module import Classifier
from tests.helpers import TINY, compose_config, fit_two_short_epochs


def _classifier(cfg: DictConfig, num_classes: int = 4, image_size: int = 32) -> Classifier:
    sized = SimpleNamespace(
        num_classes=num_classes,
        image_size=image_size,
        class_names=[str(i) for i in range(num_classes)],
        class_weights=None,
        has_val=True,
    )
    return build_module(cfg, sized)


def _finetuning(cfg: DictConfig, module: Classifier) -> TwoPhaseFinetuning:
    return TwoPhaseFinetuning(backbone_phase_names(cfg.model, module.net), cfg.model.freeze_backbone_epochs)


def _backbone_bns(module: Classifier) -> list[nn.Module]:
    return [m for m in module.net.backbone.modules() if isinstance(m, _BatchNorm)]


def _trainable(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def test_backbone_phase_hooks_and_param_groups(tmp_path: Path) -> None:
    cfg = compose_config(
        [
            "model=mseenet",
            "model.freeze_backbone_epochs=2",
            "model.backbone_lr_scale=0.1",
            "optimizer.lr=0.01",
        ],
        output_dir=tmp_path,
    )
    module = _classifier(cfg)
    finetuning = _finetuning(cfg, module)
    backbone = list(module.net.backbone.parameters())
    head = [p for n, p in module.net.named_parameters() if not n.startswith("body.backbone.")]
    assert len(finetuning.names) == len(backbone)
    optimizer = module.configure_optimizers()
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["head"]["lr"] == pytest.approx(0.01) and groups["backbone"]["lr"] == pytest.approx(0.001)
    assert {id(p) for p in groups["backbone"]["params"]} == {id(p) for p in backbone}
    assert {id(p) for p in groups["head"]["params"]} == {id(p) for p in head}

    module.train()
    finetuning.finetune_function(module, 0, optimizer)  # epoch 0 < 2: frozen
    assert finetuning.frozen
    assert not any(p.requires_grad for p in backbone) and all(p.requires_grad for p in head)
    assert not any(m.training for m in _backbone_bns(module))
    module.train()  # as Lightning does after each validation; the next training batch re-freezes
    finetuning.on_train_batch_start(SimpleNamespace(current_epoch=1), module, None, 0)
    assert not any(m.training for m in _backbone_bns(module))
    assert all(m.training for m in module.net.inception.modules())
    finetuning.finetune_function(module, 2, optimizer)
    assert all(p.requires_grad for p in backbone) and all(m.training for m in _backbone_bns(module))


def test_backbone_freezing_under_ddp_asks_for_unused_parameter_search(tmp_path: Path) -> None:
    from lightning.pytorch.strategies import DDPStrategy

    cfg = compose_config(["model=mobilenet_m", "model.freeze_backbone_epochs=1"], output_dir=tmp_path)
    module = _classifier(cfg)
    finetuning = _finetuning(cfg, module)
    with pytest.raises(ValueError, match=r"trainer\.strategy=ddp_find_unused_parameters_true"):
        finetuning.setup(SimpleNamespace(strategy=DDPStrategy()), module, "fit")
    finetuning.setup(SimpleNamespace(strategy=DDPStrategy(find_unused_parameters=True)), module, "fit")


def test_backbone_phase_keeps_the_backbones_own_choices(tmp_path: Path) -> None:
    # A timm baseline's backbone includes its (new) classifier, which must train from the start;
    # VGG16's block 5, frozen by the architecture, must stay frozen after the frozen phase.
    cfg = compose_config(["model=resnet18", "model.freeze_backbone_epochs=1"], output_dir=tmp_path)
    module = _classifier(cfg)
    finetuning = _finetuning(cfg, module)
    fc = {id(p) for p in module.net.backbone.fc.parameters()}
    named = dict(module.named_parameters())
    assert not {id(named[n]) for n in finetuning.names} & fc
    finetuning.apply(module, 0)
    assert all(p.requires_grad for p in module.net.backbone.fc.parameters())
    vgg_cfg = compose_config(["model=vgg16_mod", "model.freeze_backbone_epochs=1"], output_dir=tmp_path)
    vgg = _classifier(vgg_cfg)
    vgg_finetuning = _finetuning(vgg_cfg, vgg)
    vgg_finetuning.apply(vgg, 0)
    vgg_finetuning.apply(vgg, 1)
    assert _trainable(vgg.net) == _trainable(create_model("vgg16_mod", 4, image_size=32))
    assert not any(p.requires_grad for p in vgg.net.backbone.features[24:].parameters())


class _PhaseProbe(L.Callback):
    """Snapshots of the backbone and the head at the start and after each training epoch."""

    def __init__(self) -> None:
        self.snapshots: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []
        self.frozen_batches: list[tuple[int, bool, bool, bool]] = []

    def _snap(self, module: Classifier) -> None:
        backbone = {k: v.detach().clone() for k, v in module.net.backbone.state_dict().items()}
        head = {k: v.detach().clone() for k, v in module.net.fc.state_dict().items()}
        self.snapshots.append((backbone, head))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._snap(pl_module)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        params = list(pl_module.net.backbone.parameters())
        self.frozen_batches.append(
            (
                trainer.current_epoch,
                all(p.grad is None for p in params),
                not any(p.requires_grad for p in params),
                not any(m.training for m in _backbone_bns(pl_module)),
            )
        )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._snap(pl_module)


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], suffix: str = "") -> set[str]:
    return {k for k in before if k.endswith(suffix) and not torch.equal(before[k], after[k])}


def test_mseenet_two_phase_training_run(tmp_path: Path) -> None:
    """A real Lightning run: epoch 0 trains the head only, epoch 1 the backbone too."""
    cfg = compose_config(
        [*TINY, "model=mseenet", "model.freeze_backbone_epochs=1", "logger=none"], output_dir=tmp_path
    )
    datamodule = build_datamodule(cfg)
    datamodule.setup()
    module = build_module(cfg, datamodule)
    # The run's own callback, as leuk.cli.train gets it.
    finetuning = [
        c
        for c in build_callbacks(cfg, datamodule, module, have_logger=False)
        if isinstance(c, TwoPhaseFinetuning)
    ]
    assert len(finetuning) == 1
    probe = _PhaseProbe()
    fit_two_short_epochs(module, datamodule, *finetuning, probe)
    assert [(e, no_grad, frozen, bn_eval) for e, no_grad, frozen, bn_eval in probe.frozen_batches] == [
        (0, True, True, True),
        (0, True, True, True),
        (1, False, False, False),
        (1, False, False, False),
    ]
    (b0, h0), (b1, h1), (b2, h2) = probe.snapshots
    # Frozen phase: not one backbone weight or BatchNorm statistic moved; the head trained.
    assert _changed(b0, b1) == set()
    assert _changed(h0, h1)
    # After it: the backbone's weights and BatchNorm statistics train.
    assert _changed(b1, b2, "weight") and _changed(b1, b2, "running_mean")
    assert _changed(h1, h2)
