"""ALDL: an EfficientNetV2-S with a CBAM attention module after every stage of (Fused-)MBConv blocks.

x → stem → [stage_i → CBAM_i] for the six stages (24, 48, 64, 128, 160, 256 channels at 224 px:
112, 56, 28, 14, 14, 7 px) → 1×1 conv head (1280 channels) → global average pooling →
dropout 0.5 → FC. The same paper's lighter variant puts CBAM after the stages of a
MobileNetV3-Small (``aldl_mobilenetv3``), whose features end in its 576-channel 1×1 conv.

The paper trains it with focal loss (``loss=focal``, or ``loss=ce_then_focal``).
"""

from __future__ import annotations

import timm
import torch
from timm.models._efficientnet_blocks import ConvBnAct
from timm.models.efficientnet import EfficientNet
from torch import nn

from leuk.models.attention import CBAM
from leuk.models.registry import register_model


def _stage_channels(stage: nn.Module) -> int:
    # Every timm block ends in a norm layer, so the stage's last one carries its output width.
    norms = [m for m in stage.modules() if isinstance(m, nn.BatchNorm2d)]
    if not norms:
        raise ValueError(f"cannot tell the output width of stage {type(stage).__name__}")
    return norms[-1].num_features


def _is_pointwise_head(stage: nn.Module) -> bool:
    """A stage of plain 1×1 convolutions (MobileNetV3's last one), not (Fused-)MBConv blocks."""
    blocks = list(stage.children())
    return bool(blocks) and all(
        isinstance(b, ConvBnAct) and tuple(b.conv.kernel_size) == (1, 1) for b in blocks
    )


class CBAMStagesNet(nn.Module):
    """A timm EfficientNet or MobileNetV3 backbone with CBAM after each (Fused-)MBConv stage."""

    def __init__(
        self,
        num_classes: int,
        backbone: str,
        reduction: int = 16,
        spatial_kernel: int = 7,
        dropout: float = 0.5,
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = timm.create_model(backbone, pretrained=pretrained, num_classes=0)
        if not hasattr(self.backbone, "blocks"):
            raise ValueError(f"'{backbone}' has no stages of blocks to put CBAM after")
        # EfficientNet's 1×1 head conv comes before pooling (part of the features, as in Keras);
        # MobileNetV3's comes after it, in the classifier head, which is not used here.
        self.head_conv_in_features = isinstance(self.backbone, EfficientNet)
        if not self.head_conv_in_features:
            for name in ("conv_head", "norm_head", "act2", "flatten", "global_pool"):
                if hasattr(self.backbone, name):
                    setattr(self.backbone, name, nn.Identity())
        self.attention = nn.ModuleList(
            nn.Identity()
            if _is_pointwise_head(stage)
            else CBAM(_stage_channels(stage), reduction, spatial_kernel)
            for stage in self.backbone.blocks
        )
        self.num_features = self.backbone.num_features
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(self.num_features, num_classes)

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every stage, after its attention module."""
        b = self.backbone
        x = b.bn1(b.conv_stem(x))
        out = []
        for stage, attention in zip(b.blocks, self.attention, strict=True):
            x = attention(stage(x))
            out.append(x)
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(x)[-1]
        if self.head_conv_in_features:
            x = self.backbone.bn2(self.backbone.conv_head(x))
        return x

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(features.mean(dim=(2, 3)))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model("aldl")
class ALDL(CBAMStagesNet):
    """EfficientNetV2-S (timm ``tf_efficientnetv2_s``) + CBAM after each of its six stages."""

    def __init__(
        self,
        num_classes: int,
        reduction: int = 16,
        spatial_kernel: int = 7,
        dropout: float = 0.5,
        pretrained: bool = False,
    ) -> None:
        super().__init__(num_classes, "tf_efficientnetv2_s", reduction, spatial_kernel, dropout, pretrained)


@register_model("aldl_mobilenetv3")
class ALDLMobileNetV3(CBAMStagesNet):
    """MobileNetV3-Small (timm ``mobilenetv3_small_100``) + CBAM after each of its five block stages."""

    def __init__(
        self,
        num_classes: int,
        reduction: int = 16,
        spatial_kernel: int = 7,
        dropout: float = 0.5,
        pretrained: bool = False,
    ) -> None:
        super().__init__(num_classes, "mobilenetv3_small_100", reduction, spatial_kernel, dropout, pretrained)
