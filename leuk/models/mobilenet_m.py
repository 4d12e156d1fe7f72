"""MobileNet_M: MobileNet v1 (1.0) → global average pooling → dropout → BatchNorm → dense, L1 on the dense.

x → MobileNet v1 1.0 features (timm ``mobilenetv1_100``, 1024 channels) → GAP → dropout →
BatchNorm(1024) → dense(num_classes) (the paper's Table 4). The dense kernel carries an L1 penalty,
``l1 · Σ|W|`` (0.015 in the paper), which the LightningModule adds to the loss of every stage
through ``regularization_loss`` (Keras counts it in the validation loss the paper monitors too).
The dense layer starts from a uniform distribution (Sec. 3.6): Keras's ``"uniform"`` initializer,
U(-limit, limit) with limit 0.05, and a zero bias; ``dense_init`` picks another start.

Parameters with 2 classes: 3,206,976 (backbone) + 2,048 (BatchNorm γ, β) + 2,050 (dense) =
3,211,074 trainable; the paper's Keras table also counts the 21,888 + 2,048 BatchNorm running
means and variances: 3,235,010.
"""

from __future__ import annotations

from typing import Literal

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
        dense_init: Literal["uniform", "glorot_uniform", "torch"] = "uniform",
        dense_init_limit: float = 0.05,
        bn_momentum: float | None = 0.01,
        head_bn_eps: float = 1e-3,
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        if l1 < 0:
            raise ValueError(f"model.arch.l1 must be >= 0, got {l1}")
        if dense_init not in ("uniform", "glorot_uniform", "torch"):
            raise ValueError(
                f"model.arch.dense_init must be uniform, glorot_uniform or torch, got {dense_init!r}"
            )
        if dense_init_limit <= 0:
            raise ValueError(f"model.arch.dense_init_limit must be > 0, got {dense_init_limit}")
        if bn_momentum is not None and not 0 < bn_momentum < 1:
            raise ValueError(f"model.arch.bn_momentum must be in (0, 1) or null, got {bn_momentum}")
        # Keras's BatchNormalization momentum 0.99 is torch's 0.01, in every BatchNorm layer of the
        # Keras MobileNet the paper fine-tunes; null keeps timm's 0.1 in the backbone. The backbone
        # keeps timm's eps, which its ImageNet weights were trained with.
        momentum = {} if bn_momentum is None else {"momentum": bn_momentum}
        self.backbone = timm.create_model(
            "mobilenetv1_100",
            pretrained=pretrained,
            num_classes=0,
            **{f"bn_{k}": v for k, v in momentum.items()},
        )
        self.num_features = self.backbone.num_features
        self.drop = nn.Dropout(dropout)
        self.norm = nn.BatchNorm1d(self.num_features, eps=head_bn_eps, **momentum)
        self.fc = nn.Linear(self.num_features, num_classes)
        # Keras's Dense starts with a zero bias whatever its kernel initializer; "torch" keeps
        # nn.Linear's own start (kaiming-uniform kernel, uniform bias).
        if dense_init == "uniform":
            nn.init.uniform_(self.fc.weight, -dense_init_limit, dense_init_limit)
            nn.init.zeros_(self.fc.bias)
        elif dense_init == "glorot_uniform":
            nn.init.xavier_uniform_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)
        self.l1 = l1

    def regularization_loss(self) -> torch.Tensor:
        """``l1 · Σ|W|`` over the dense kernel (not its bias), as Keras's ``kernel_regularizer``."""
        return self.l1 * self.fc.weight.abs().sum()

    def gradcam_layer(self) -> nn.Module:
        """The last depthwise-separable block: its 1024-channel map is all the head pools."""
        return self.backbone.blocks[-1][-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.norm(self.drop(features.mean(dim=(2, 3))))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
