"""MCB-HyperNet: morphological context blocks around a MobileNetV3-Small backbone.

Eqs. (1)–(23) of the paper, in the order of ``forward``:
F_res = ReLU(BN(conv3x3(ReLU(BN(conv3x3(x))))) + conv1x1(x))        H×W×64
F_MCB1 = dilate(F_res) − erode(F_res)                                 H×W×64
F_mob = MobileNetV3-Small features(F_MCB1)                            H/32×W/32×576
F_MCB2 = dilate(F_mob) − erode(F_mob)                                 H/32×W/32×576
F = concat(maxpool(F_res), maxpool(F_MCB1), F_mob, F_MCB2)           H/32×W/32×1280
logits = FC(dropout(GAP(F)))
"""

from __future__ import annotations

from typing import Literal

import timm
import torch
import torch.nn.functional as F
from torch import nn

from leuk.models.morphology import MorphologicalContextBlock
from leuk.models.registry import register_model

GatingMode = Literal["none", "scalar", "se"]


class ResidualStem(nn.Module):
    """A basic ResNet block at full resolution with a 1×1 projection shortcut (3 → 64 channels)."""

    def __init__(self, in_chans: int = 3, width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.shortcut = nn.Sequential(nn.Conv2d(in_chans, width, 1, bias=False), nn.BatchNorm2d(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class BranchGate(nn.Module):
    """A learned weight per branch before the concat: a sigmoid of a scalar, or of an SE descriptor."""

    def __init__(self, channels: int, mode: GatingMode, se_reduction: int = 16) -> None:
        super().__init__()
        self.mode = mode
        if mode == "scalar":
            # sigmoid(0) = 0.5 for every branch at the start: no branch is favoured.
            self.logit = nn.Parameter(torch.zeros(1))
        elif mode == "se":
            hidden = max(channels // se_reduction, 8)
            self.fc = nn.Sequential(
                nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "scalar":
            return x * torch.sigmoid(self.logit)
        if self.mode == "se":
            w = torch.sigmoid(self.fc(x.mean(dim=(2, 3))))
            return x * w[:, :, None, None]
        return x


@register_model("mcb_hypernet")
class MCBHyperNet(nn.Module):
    """MCB-HyperNet classifier (see the module docstring for the equations)."""

    stem_width = 64

    def __init__(
        self,
        num_classes: int,
        in_chans: int = 3,
        morph_kernel: int = 3,
        dropout: float = 0.5,
        gating: GatingMode = "none",
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        if gating not in ("none", "scalar", "se"):
            raise ValueError(f"model.arch.gating must be one of none, scalar, se; got '{gating}'")
        self.res_block = ResidualStem(in_chans, self.stem_width)
        self.mcb1 = MorphologicalContextBlock(morph_kernel)
        # The backbone reads the 64-channel MCB map, so its stem is built for 64 input channels
        # (timm adapts ImageNet stem weights by repetition when pretrained=true).
        self.backbone = timm.create_model(
            "mobilenetv3_small_100", pretrained=pretrained, in_chans=self.stem_width, num_classes=0
        )
        # Only forward_features is used: drop the classification head's 576→1024 conv so that no
        # parameter goes unused (DDP would stop on it).
        for name in ("conv_head", "norm_head", "act2", "flatten", "global_pool"):
            if hasattr(self.backbone, name):
                setattr(self.backbone, name, nn.Identity())
        mob_channels = self.backbone.num_features
        self.mcb2 = MorphologicalContextBlock(morph_kernel)
        widths = (self.stem_width, self.stem_width, mob_channels, mob_channels)
        self.gates = nn.ModuleList(BranchGate(c, gating) for c in widths)
        self.num_features = sum(widths)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(self.num_features, num_classes)

    def branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """F_res, F_MCB1 (full resolution) and F_mob, F_MCB2 (stride 32), before pooling."""
        f_res = self.res_block(x)
        f_mcb1 = self.mcb1(f_res)
        f_mob = self.backbone.forward_features(f_mcb1)
        f_mcb2 = self.mcb2(f_mob)
        return f_res, f_mcb1, f_mob, f_mcb2

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        f_res, f_mcb1, f_mob, f_mcb2 = self.branches(x)
        size = f_mob.shape[-2:]
        pooled = [F.adaptive_max_pool2d(f, size) for f in (f_res, f_mcb1)]
        feats = [gate(f) for gate, f in zip(self.gates, (*pooled, f_mob, f_mcb2), strict=True)]
        return torch.cat(feats, dim=1)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(features.mean(dim=(2, 3)))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
