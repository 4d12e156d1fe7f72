"""ALDL: an EfficientNetV2-S with a CBAM attention module after every MBConv block (§4.2.9).

x → stem → the six stages of (Fused-)MBConv blocks, each MBConv block followed by its CBAM
(30 of the 40 blocks at 224 px: stages 4–6, 128/160/256 channels; the Fused-MBConv blocks of
stages 1–3 have no depthwise convolution, so they are not Eq. 16's MBConv) → 1×1 conv head (1280
channels) → global average pooling → dropout → FC. The same paper's lighter variant
(``aldl_mobilenetv3``, §3–4's MobileNetV3-Small) puts CBAM after each of MobileNetV3-Small's 11
MBConv blocks; its features end in its 576-channel 1×1 conv.

``cbam_after``: ``mbconv`` (the paper), ``block`` (every (Fused-)MBConv block too) or ``stage``
(after the last block of each stage only, leuk's earlier reading). The paper trains it with
cross-entropy + focal loss, then focal loss alone (``loss=ce_then_focal``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import timm
import torch
from timm.models._efficientnet_blocks import ConvBnAct, DepthwiseSeparableConv, InvertedResidual
from timm.models.efficientnet import EfficientNet
from torch import nn

from leuk.models.attention import CBAM
from leuk.models.registry import register_model

CbamAfter = Literal["mbconv", "block", "stage"]
CBAM_AFTER: tuple[str, ...] = ("mbconv", "block", "stage")


def _out_channels(module: nn.Module) -> int:
    # Every timm block ends in a norm layer, so its last one carries the output width.
    norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    if not norms:
        raise ValueError(f"cannot tell the output width of {type(module).__name__}")
    return norms[-1].num_features


def is_mbconv(block: nn.Module) -> bool:
    """Eq. 16's MBConv: a depthwise convolution between 1×1 ones (timm's InvertedResidual, and
    DepthwiseSeparableConv, its expansion-1 form). Fused-MBConv (EdgeResidual, ConvBnAct) is not."""
    return isinstance(block, (InvertedResidual, DepthwiseSeparableConv))


def _is_pointwise(block: nn.Module) -> bool:
    """A plain 1×1 convolution block (MobileNetV3's last stage), no (Fused-)MBConv."""
    return isinstance(block, ConvBnAct) and tuple(block.conv.kernel_size) == (1, 1)


def _wants_cbam(stage: nn.Sequential, j: int, cbam_after: str) -> bool:
    block = stage[j]
    if _is_pointwise(block):
        return False
    if cbam_after == "mbconv":
        return is_mbconv(block)
    if cbam_after == "block":
        return True
    return j == len(stage) - 1


class CBAMBlocksNet(nn.Module):
    """A timm EfficientNet or MobileNetV3 backbone with CBAM after its blocks (see ``cbam_after``).

    The backbone's own modules are left in place (its parameter names stay timm's, so ImageNet
    or local backbone weights load unchanged); ``attention[i][j]`` follows ``backbone.blocks[i][j]``
    (an ``nn.Identity`` where no CBAM goes).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str,
        reduction: int = 16,
        spatial_kernel: int = 7,
        dropout: float = 0.5,
        pretrained: bool = False,
        cbam_after: CbamAfter = "mbconv",
        channel_pools: Sequence[str] = ("avg",),
    ) -> None:
        super().__init__()
        if cbam_after not in CBAM_AFTER:
            raise ValueError(
                f"model.arch.cbam_after must be one of {', '.join(CBAM_AFTER)}; got {cbam_after!r}"
            )
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
            nn.ModuleList(
                CBAM(_out_channels(stage[j]), reduction, spatial_kernel, channel_pools)
                if _wants_cbam(stage, j, cbam_after)
                else nn.Identity()
                for j in range(len(stage))
            )
            for stage in self.backbone.blocks
        )
        self.num_features = self.backbone.num_features
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(self.num_features, num_classes)

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every stage, its blocks each followed by their attention module."""
        b = self.backbone
        x = b.bn1(b.conv_stem(x))
        out = []
        for stage, attention in zip(b.blocks, self.attention, strict=True):
            for block, att in zip(stage, attention, strict=True):
                x = att(block(x))
            out.append(x)
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(x)[-1]
        if self.head_conv_in_features:
            x = self.backbone.bn2(self.backbone.conv_head(x))
        return x

    def gradcam_layer(self) -> nn.Module:
        """The module whose output is ``forward_features``' (the map after the last CBAM, and
        EfficientNet's 1×1 head conv)."""
        if self.head_conv_in_features:
            return self.backbone.bn2
        last = self.attention[-1][-1]
        return last if isinstance(last, CBAM) else self.backbone.blocks[-1][-1]

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(features.mean(dim=(2, 3)))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model("aldl")
class ALDL(CBAMBlocksNet):
    """EfficientNetV2-S (timm ``tf_efficientnetv2_s``) + CBAM after each of its 30 MBConv blocks."""

    def __init__(
        self,
        num_classes: int,
        reduction: int = 16,
        spatial_kernel: int = 7,
        dropout: float = 0.5,
        pretrained: bool = False,
        cbam_after: CbamAfter = "mbconv",
        channel_pools: Sequence[str] = ("avg",),
    ) -> None:
        super().__init__(
            num_classes,
            "tf_efficientnetv2_s",
            reduction,
            spatial_kernel,
            dropout,
            pretrained,
            cbam_after,
            channel_pools,
        )


@register_model("aldl_mobilenetv3")
class ALDLMobileNetV3(CBAMBlocksNet):
    """MobileNetV3-Small (timm ``mobilenetv3_small_100``) + CBAM after each of its 11 MBConv blocks."""

    def __init__(
        self,
        num_classes: int,
        reduction: int = 16,
        spatial_kernel: int = 7,
        dropout: float = 0.5,
        pretrained: bool = False,
        cbam_after: CbamAfter = "mbconv",
        channel_pools: Sequence[str] = ("avg",),
    ) -> None:
        super().__init__(
            num_classes,
            "mobilenetv3_small_100",
            reduction,
            spatial_kernel,
            dropout,
            pretrained,
            cbam_after,
            channel_pools,
        )
