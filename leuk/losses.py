"""Losses beyond ``torch.nn``: focal loss, and cross-entropy + focal loss that hands over to focal loss.

Both take logits and integer class targets, as ``nn.CrossEntropyLoss`` does, so a loss config
swaps one for another without touching the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Reduction = Literal["mean", "sum", "none"]


class FocalLoss(nn.Module):
    """FL = −α_t (1 − p_t)^γ log p_t (Lin et al., 2017), p_t the softmax probability of the true class.

    ``alpha`` is one weight for every class or a list with one weight per class; ``None`` means 1.
    With γ = 0 and α = 1 it is the cross-entropy.
    """

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | Sequence[float] | None = 0.25,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal loss: gamma must be >= 0, got {gamma}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"focal loss: reduction must be mean, sum or none, got '{reduction}'")
        self.gamma = float(gamma)
        self.reduction = reduction
        self.alpha: torch.Tensor | None
        if alpha is None or isinstance(alpha, (int, float)):
            self.scalar_alpha = None if alpha is None else float(alpha)
            self.register_buffer("alpha", None, persistent=False)
        else:
            self.scalar_alpha = None
            self.register_buffer("alpha", torch.tensor([float(a) for a in alpha]), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # float32 whatever the autocast dtype: (1 − p_t)^γ of a bf16 p_t near 1 is mostly rounding.
        log_pt = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
        loss = -log_pt
        if self.gamma != 0:
            # clamp: p_t can round to slightly above 1, and a negative base to a real power is NaN.
            loss = (1.0 - log_pt.exp()).clamp(min=0.0).pow(self.gamma) * loss
        if self.alpha is not None:
            if self.alpha.numel() != logits.shape[1]:
                raise ValueError(
                    f"focal loss: {self.alpha.numel()} per-class alpha values for {logits.shape[1]} classes"
                )
            loss = self.alpha[target] * loss
        elif self.scalar_alpha is not None:
            loss = self.scalar_alpha * loss
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss


class CEThenFocalLoss(nn.Module):
    """Cross-entropy combined with focal loss for the first ``ce_epochs`` epochs, focal loss after.

    ALDL (§4.2.10) adds cross-entropy to the focal loss in the early epochs to stabilise
    convergence, then fine-tunes on focal loss alone: ``ce_weight`` × CE + FL, then FL.
    ``focal_with_ce: false`` gives cross-entropy alone in the early epochs (a switch). The training
    loop tells it the epoch through ``set_epoch`` (the LightningModule does so at the start of
    every epoch); until then it is at epoch 0.
    """

    def __init__(
        self,
        ce_epochs: int = 5,
        gamma: float = 2.0,
        alpha: float | Sequence[float] | None = 0.25,
        reduction: Literal["mean", "sum"] = "mean",
        ce_weight: float = 1.0,
        focal_with_ce: bool = True,
    ) -> None:
        super().__init__()
        if ce_epochs < 0:
            raise ValueError(f"ce_then_focal: ce_epochs must be >= 0, got {ce_epochs}")
        if ce_weight < 0:
            raise ValueError(f"ce_then_focal: ce_weight must be >= 0, got {ce_weight}")
        self.ce_epochs = ce_epochs
        self.ce_weight = float(ce_weight)
        self.focal_with_ce = bool(focal_with_ce)
        self.focal = FocalLoss(gamma=gamma, alpha=alpha, reduction=reduction)
        self.reduction = reduction
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def uses_focal(self) -> bool:
        """Focal loss alone (the epochs after ``ce_epochs``)."""
        return self.epoch >= self.ce_epochs

    @property
    def uses_focal_with_ce(self) -> bool:
        """Cross-entropy plus focal loss (the early epochs, unless ``focal_with_ce`` is off)."""
        return not self.uses_focal and self.focal_with_ce

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.uses_focal:
            return self.focal(logits, target)
        ce = self.ce_weight * F.cross_entropy(logits.float(), target, reduction=self.reduction)
        return ce + self.focal(logits, target) if self.focal_with_ce else ce
