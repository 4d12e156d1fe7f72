"""Focal loss and cross-entropy-then-focal: values by hand, the cross-entropy limit, the epoch switch."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from leuk.callbacks import LossSchedule
from leuk.composition import build_callbacks, build_datamodule, build_module
from leuk.losses import CEThenFocalLoss, FocalLoss
from tests.helpers import TINY, compose_config, fit_two_short_epochs


def test_focal_loss_hand_computed() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    target = torch.tensor([0, 2])
    # Sample 1: p_t = e^2 / (e^2 + 1 + e^-1); sample 2: p_t = 1 / (e^0.5 + e^1.5 + 1).
    by_hand = []
    for row, t in ((logits[0].tolist(), 0), (logits[1].tolist(), 2)):
        p_t = math.exp(row[t]) / sum(math.exp(v) for v in row)
        by_hand.append(-0.25 * (1 - p_t) ** 2 * math.log(p_t))
    assert by_hand[0] == pytest.approx(0.0010362, abs=1e-6)
    assert by_hand[1] == pytest.approx(0.3630, abs=1e-4)
    loss = FocalLoss(gamma=2.0, alpha=0.25)
    assert loss(logits, target).item() == pytest.approx(sum(by_hand) / 2, rel=1e-5)
    per_sample = FocalLoss(gamma=2.0, alpha=0.25, reduction="none")(logits, target)
    assert per_sample.tolist() == pytest.approx(by_hand, rel=1e-5)
    assert FocalLoss(reduction="sum")(logits, target).item() == pytest.approx(sum(by_hand), rel=1e-5)


def test_focal_loss_is_cross_entropy_at_gamma_0_alpha_1() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 4, generator=g) * 3
    target = torch.randint(0, 4, (16,), generator=g)
    ce = F.cross_entropy(logits, target)
    assert torch.allclose(FocalLoss(gamma=0.0, alpha=1.0)(logits, target), ce)
    assert torch.allclose(FocalLoss(gamma=0.0, alpha=None)(logits, target), ce)
    assert torch.allclose(FocalLoss(gamma=0.0, alpha=[1.0] * 4)(logits, target), ce)
    # γ > 0 down-weights every example: the focal loss is below the cross-entropy.
    assert FocalLoss(gamma=2.0, alpha=1.0)(logits, target) < ce


def test_focal_loss_per_class_alpha() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(12, 4, generator=g)
    target = torch.arange(12) % 4
    alpha = [0.1, 0.2, 0.3, 0.4]
    weighted = FocalLoss(alpha=alpha, reduction="none")(logits, target)
    plain = FocalLoss(alpha=1.0, reduction="none")(logits, target)
    assert torch.allclose(weighted, plain * torch.tensor(alpha)[target])
    with pytest.raises(ValueError, match="4 per-class alpha values for 3 classes"):
        FocalLoss(alpha=alpha)(logits[:, :3], target % 3)


def test_focal_loss_gradient_is_finite_for_confident_predictions() -> None:
    logits = torch.tensor([[40.0, -40.0], [0.0, 0.0]], requires_grad=True)
    loss = FocalLoss(gamma=0.5)(logits, torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_ce_then_focal_switches_at_the_epoch() -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(8, 3, generator=g)
    target = torch.randint(0, 3, (8,), generator=g)
    # focal_with_ce=False: CE alone, then focal (the paper's CE + focal early phase is in test_fidelity_aldl).
    loss = CEThenFocalLoss(ce_epochs=2, gamma=2.0, alpha=0.25, focal_with_ce=False)
    ce = F.cross_entropy(logits, target)
    focal = FocalLoss(gamma=2.0, alpha=0.25)(logits, target)
    assert not torch.allclose(ce, focal)
    assert torch.allclose(loss(logits, target), ce)  # epoch 0 until told otherwise
    for epoch, expected in ((1, ce), (2, focal), (5, focal), (0, ce)):
        loss.set_epoch(epoch)
        assert torch.allclose(loss(logits, target), expected), epoch


def test_loss_configs_instantiate(tmp_path: Path) -> None:
    cfg = compose_config(["loss=focal"], output_dir=tmp_path)
    focal = instantiate(cfg.loss)
    assert isinstance(focal, FocalLoss) and focal.gamma == 2.0 and focal.scalar_alpha == 0.25
    cfg = compose_config(["loss=ce_then_focal", "loss.alpha=[0.5,0.5,1.0,1.0]"], output_dir=tmp_path)
    staged = instantiate(cfg.loss)
    assert isinstance(staged, CEThenFocalLoss)
    assert staged.focal.alpha.tolist() == [0.5, 0.5, 1.0, 1.0]


class _LossPhase(LossSchedule):
    """The run's loss schedule, recording which loss each epoch trained with."""

    def __init__(self) -> None:
        self.focal_by_epoch: dict[int, bool] = {}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        self.focal_by_epoch[trainer.current_epoch] = pl_module.criterion.uses_focal


def test_training_tells_the_loss_its_epoch(tmp_path: Path) -> None:
    cfg = compose_config(
        [*TINY, "loss=ce_then_focal", "loss.ce_epochs=1", "model=aldl_mobilenetv3", "logger=none"],
        output_dir=tmp_path,
    )
    datamodule = build_datamodule(cfg)
    datamodule.setup()
    module = build_module(cfg, datamodule)
    # Every training run has the loss schedule among its callbacks.
    callbacks = build_callbacks(cfg, datamodule, module, have_logger=False)
    assert any(isinstance(c, LossSchedule) for c in callbacks)
    probe = _LossPhase()
    fit_two_short_epochs(module, datamodule, probe)
    assert probe.focal_by_epoch == {0: False, 1: True}
