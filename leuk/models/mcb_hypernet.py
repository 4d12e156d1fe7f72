"""MCB-HyperNet: morphological context blocks around a MobileNetV3-Small backbone.

Eqs. (1)–(23) of the paper (Dubai, Kadhimi & Najjar 2025), in the order of ``forward``:
im in [0, 1] (Eq. 1; the model config's mean 0 and std 1)                       H×W×3
F_res = ReLU(BN(conv3x3(ReLU(BN(conv3x3(im) + b1)))) + b2) + im   (Eq. 2)       H×W×64
F_MCB1 = dilate(F_res) − erode(F_res)                              (Eqs. 4–8)    H×W×64
F_mob = MobileNetV3-Small features(F_MCB1)                         (Eqs. 10–14)  H/32×W/32×576
F_MCB2 = dilate(F_mob) − erode(F_mob)                              (Eqs. 15–17)  H/32×W/32×576
F = concat(maxpool(F_res), maxpool(F_MCB1), F_mob, F_MCB2)         (Eqs. 19–22)  H/32×W/32×1280
logits = FC(F)  (Eq. 23: one fully connected layer on the whole fused map; softmax in the loss)

``arch.residual=resnet_basic``, ``arch.head=gap`` and ``arch.dropout`` restore leuk's former
block (ReLU after a 1×1-projection sum) and head (global average pooling, dropout, FC).
"""

from __future__ import annotations

from typing import Literal

import timm
import torch
import torch.nn.functional as F
from torch import nn

from leuk.models.morphology import ErosionMode, MorphologicalContextBlock
from leuk.models.registry import register_model

GatingMode = Literal["none", "scalar", "se"]
ResidualMode = Literal["paper", "resnet_basic"]
HeadMode = Literal["flatten", "gap"]


class ResidualStem(nn.Module):
    """The full-resolution ResNet block (3 → 64 channels).

    ``paper`` is Eq. 2: two 3×3 convolutions with biases, each followed by BN and ReLU, then the
    image added to the activated map; Eq. 2 names no shortcut weights, so the image's 3 channels
    are added to the first 3 of 64 (the zero-padded identity of ResNet's option A).
    ``resnet_basic`` is He et al.'s basic block: bias-free convolutions, a 1×1-conv + BN projection
    shortcut, and the ReLU after the sum.
    """

    def __init__(self, in_chans: int = 3, width: int = 64, mode: ResidualMode = "paper") -> None:
        super().__init__()
        if mode not in ("paper", "resnet_basic"):
            raise ValueError(f"model.arch.residual must be paper or resnet_basic; got '{mode}'")
        if mode == "paper" and in_chans > width:
            raise ValueError(
                f"model.arch.residual=paper adds the {in_chans}-channel input to a {width}-channel map; "
                "use residual=resnet_basic for wider inputs"
            )
        self.mode = mode
        self.pad_channels = width - in_chans
        bias = mode == "paper"
        self.conv1 = nn.Conv2d(in_chans, width, 3, padding=1, bias=bias)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=bias)
        self.bn2 = nn.BatchNorm2d(width)
        if mode == "resnet_basic":
            self.shortcut = nn.Sequential(nn.Conv2d(in_chans, width, 1, bias=False), nn.BatchNorm2d(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.mode == "resnet_basic":
            return F.relu(out + self.shortcut(x))
        return F.relu(out) + F.pad(x, (0, 0, 0, 0, 0, self.pad_channels))

    def extra_repr(self) -> str:
        return f"mode={self.mode}"


class Concat(nn.Module):
    """The fused map F of Eq. 21 (channel concatenation): the one module whose output holds every
    branch, hence Grad-CAM's target."""

    def forward(self, *maps: torch.Tensor) -> torch.Tensor:
        return torch.cat(maps, dim=1)


class BranchGate(nn.Module):
    """A learned weight per branch before the concat: a sigmoid of a scalar, or of an SE descriptor.

    Not in the paper's equations: the gating it describes (Sec. 1, "only the most relevant
    structural information") is the squeeze-and-excitation of Eq. 12 inside the MobileNetV3 blocks,
    which timm's MobileNetV3-Small has; ``none`` is therefore the paper's setting."""

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
        image_size: int | None = None,
        morph_kernel: int = 3,
        erosion: ErosionMode = "exact",
        residual: ResidualMode = "paper",
        head: HeadMode = "flatten",
        dropout: float = 0.0,
        gating: GatingMode = "none",
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        if gating not in ("none", "scalar", "se"):
            raise ValueError(f"model.arch.gating must be one of none, scalar, se; got '{gating}'")
        if head not in ("flatten", "gap"):
            raise ValueError(f"model.arch.head must be flatten or gap; got '{head}'")
        if head == "flatten" and image_size is None:
            raise ValueError(
                "mcb_hypernet with model.arch.head=flatten needs the input size (data.image_size): "
                "its FC layer reads the whole fused map"
            )
        self.head = head
        self.res_block = ResidualStem(in_chans, self.stem_width, residual)
        self.mcb1 = MorphologicalContextBlock(morph_kernel, erosion)
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
        self.mcb2 = MorphologicalContextBlock(morph_kernel, erosion)
        widths = (self.stem_width, self.stem_width, mob_channels, mob_channels)
        self.gates = nn.ModuleList(BranchGate(c, gating) for c in widths)
        self.fuse = Concat()
        self.num_features = sum(widths)
        self.grid = self._feature_grid(image_size) if head == "flatten" else None
        fc_in = self.num_features * (self.grid[0] * self.grid[1] if self.grid else 1)
        self.image_size = image_size
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(fc_in, num_classes)

    def _feature_grid(self, image_size: int) -> tuple[int, int]:
        """H_d × W_d of F_mob for ``image_size`` inputs, from one forward pass of the backbone
        (in eval mode, so that BatchNorm statistics stay untouched)."""
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            with torch.no_grad():
                probe = torch.zeros(1, self.stem_width, image_size, image_size)
                h, w = self.backbone.forward_features(probe).shape[-2:]
        finally:
            self.backbone.train(was_training)
        return int(h), int(w)

    def gradcam_layer(self) -> nn.Module:
        """The fused map of Eq. 21: both full-resolution branches (pooled) and both stride-32 ones."""
        return self.fuse

    def branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """F_res, F_MCB1 (full resolution) and F_mob, F_MCB2 (stride 32), before pooling."""
        f_res = self.res_block(x)
        f_mcb1 = self.mcb1(f_res)
        f_mob = self.backbone.forward_features(f_mcb1)
        f_mcb2 = self.mcb2(f_mob)
        return f_res, f_mcb1, f_mob, f_mcb2

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        f_res, f_mcb1, f_mob, f_mcb2 = self.branches(x)
        # Eqs. 19–20: a max-pool of window H/H_d (adaptive where H_d does not divide H).
        size = f_mob.shape[-2:]
        pooled = [F.adaptive_max_pool2d(f, size) for f in (f_res, f_mcb1)]
        feats = [gate(f) for gate, f in zip(self.gates, (*pooled, f_mob, f_mcb2), strict=True)]
        return self.fuse(*feats)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.head == "flatten":
            if tuple(features.shape[-2:]) != self.grid:
                raise ValueError(
                    f"mcb_hypernet was built for {self.image_size}px inputs (a {self.grid[0]}×{self.grid[1]} "
                    f"fused map; model.arch.head=flatten), got a {features.shape[-2]}×{features.shape[-1]} "
                    "map: feed images of data.image_size, or use model.arch.head=gap"
                )
            x = features.flatten(1)
        else:
            x = features.mean(dim=(2, 3))
        x = self.drop(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
