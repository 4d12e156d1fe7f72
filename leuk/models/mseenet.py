"""MSEENet: EfficientNetV2-B0 features → an Inception module → GAP → dropout → FC.

x → EfficientNetV2-B0 features (timm ``tf_efficientnetv2_b0``, 1280 channels, 7×7 at 224 px) →
concat(1×1 conv; 1×1 → 3×3 conv; 1×1 → 5×5 conv; 3×3 max-pool → 1×1 conv) → GAP → dropout → FC.

Every branch keeps the spatial size ("same" padding, stride 1), so the module works at any input
size. The paper keeps the (ImageNet) backbone frozen in its first training phase and fine-tunes it
afterwards; that schedule is the LightningModule's (``model.freeze_backbone_epochs``,
``model.backbone_lr_scale``), reading ``self.backbone``. The paper gives neither the branch widths,
the length of the frozen phase, the fine-tuning learning rate nor the dropout: leuk's choices are
listed in docs/deviations.md, MSEENet.
"""

from __future__ import annotations

from collections.abc import Sequence

import timm
import torch
from torch import nn

from leuk.models.registry import register_model


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_chans: int, out_chans: int, kernel_size: int) -> None:
        super().__init__(
            nn.Conv2d(in_chans, out_chans, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_chans),
            nn.ReLU(inplace=True),
        )


class InceptionModule(nn.Module):
    """Four parallel branches (GoogLeNet's Inception v1 module), concatenated along channels."""

    def __init__(
        self,
        in_chans: int,
        branch1x1: int,
        branch3x3: Sequence[int],
        branch5x5: Sequence[int],
        pool_proj: int,
    ) -> None:
        super().__init__()
        for name, widths in (("branch3x3", branch3x3), ("branch5x5", branch5x5)):
            if len(widths) != 2:
                raise ValueError(
                    f"model.arch.{name}: needs [1×1 reduction width, output width], got {widths}"
                )
        self.b1 = ConvBNReLU(in_chans, branch1x1, 1)
        self.b3 = nn.Sequential(
            ConvBNReLU(in_chans, branch3x3[0], 1), ConvBNReLU(branch3x3[0], branch3x3[1], 3)
        )
        self.b5 = nn.Sequential(
            ConvBNReLU(in_chans, branch5x5[0], 1), ConvBNReLU(branch5x5[0], branch5x5[1], 5)
        )
        self.bp = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), ConvBNReLU(in_chans, pool_proj, 1))
        self.out_chans = branch1x1 + branch3x3[1] + branch5x5[1] + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], dim=1)


@register_model("mseenet")
class MSEENet(nn.Module):
    """MSEENet classifier (see the module docstring)."""

    def __init__(
        self,
        num_classes: int,
        branch1x1: int = 64,
        branch3x3: Sequence[int] = (96, 128),
        branch5x5: Sequence[int] = (16, 32),
        pool_proj: int = 32,
        dropout: float = 0.5,
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = timm.create_model("tf_efficientnetv2_b0", pretrained=pretrained, num_classes=0)
        self.inception = InceptionModule(
            self.backbone.num_features, branch1x1, branch3x3, branch5x5, pool_proj
        )
        self.num_features = self.inception.out_chans
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(self.num_features, num_classes)

    def gradcam_layer(self) -> nn.Module:
        """The whole Inception module: its output concatenates all four branches, the model's
        representation before pooling (one branch alone would explain a fraction of it)."""
        return self.inception

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.inception(self.backbone.forward_features(x))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(features.mean(dim=(2, 3)))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
