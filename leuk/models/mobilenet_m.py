"""MobileNet_M: MobileNet v1 (1.0) → global average pooling → dropout → BatchNorm → dense, L1 on the dense.

x → MobileNet v1 1.0 features (timm ``mobilenetv1_100``, 1024 channels) → GAP → dropout →
BatchNorm(1024) → dense(num_classes). The dense kernel carries an L1 penalty,
``l1 · Σ|W|`` (0.015 in the paper), which the LightningModule adds to the training loss through
``regularization_loss``.

Parameters with 2 classes: 3,206,976 (backbone) + 2,048 (BatchNorm γ, β) + 2,050 (dense) =
3,211,074 trainable; the paper's Keras table also counts the 21,888 + 2,048 BatchNorm running
means and variances: 3,235,010.
"""

from __future__ import annotations

import timm
import torch
from torch import nn

from leuk.models.registry import register_model


@register_model("mobilenet_m")
class MobileNetM(nn.Module):
    """MobileNet_M classifier (see the module docstring)."""

    def __init__(
        self,
        num_classes: int,
        dropout: float = 0.5,
        l1: float = 0.015,
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        if l1 < 0:
            raise ValueError(f"model.arch.l1 must be >= 0, got {l1}")
        self.backbone = timm.create_model("mobilenetv1_100", pretrained=pretrained, num_classes=0)
        self.num_features = self.backbone.num_features
        self.drop = nn.Dropout(dropout)
        # Keras's BatchNormalization defaults (momentum 0.99 is PyTorch's 0.01), as the paper used.
        self.norm = nn.BatchNorm1d(self.num_features, eps=1e-3, momentum=0.01)
        self.fc = nn.Linear(self.num_features, num_classes)
        self.l1 = l1

    def regularization_loss(self) -> torch.Tensor:
        """``l1 · Σ|W|`` over the dense kernel (not its bias), as Keras's ``kernel_regularizer``."""
        return self.l1 * self.fc.weight.abs().sum()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.norm(self.drop(features.mean(dim=(2, 3))))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
