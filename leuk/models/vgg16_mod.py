"""Modified VGG16: VGG16's convolutional part → flatten → dense 1024 + ReLU → dropout 0.25 → FC.

The convolutional part is Keras's ``VGG16(include_top=False)``: 13 convolutions in five blocks, each
ending in a 2×2 max-pool, 512 channels at ⌊size/32⌋ × ⌊size/32⌋ (9×9 at the paper's 300 px).
Because the head flattens that map, its width depends on ``data.image_size``, which the framework
passes in. The paper fine-tunes block1_conv1 … block4_conv3 of a pre-trained VGG16, so block 5
keeps its ImageNet weights; ``trainable_blocks`` says which blocks train. A frozen block is only
meaningful with weights (``model.pretrained`` or ``model.weights``): the weights policy
(``leuk.models.registry.check_weights_policy``) refuses a run that would keep it random.

Parameters at 300 px with 4 classes: 14,714,688 (convolutions) + 42,468,352 (dense 41,472 → 1024)
+ 4,100 (FC) = 57,187,140, of which 50,107,716 train with block 5 (7,079,424) frozen: what Keras
counts for the paper's description (the paper itself states no count).
"""

from __future__ import annotations

from collections.abc import Sequence

import timm
import torch
from torch import nn

from leuk.models.registry import register_model

N_BLOCKS = 5


@register_model("vgg16_mod")
class VGG16Mod(nn.Module):
    """Modified VGG16 classifier (see the module docstring)."""

    def __init__(
        self,
        num_classes: int,
        image_size: int | None = None,
        hidden: int = 1024,
        dropout: float = 0.25,
        trainable_blocks: Sequence[int] = (1, 2, 3, 4),
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        if image_size is None:
            raise ValueError(
                "vgg16_mod needs the input size (data.image_size): its dense layer depends on it"
            )
        grid = image_size // 2**N_BLOCKS
        if grid < 1:
            raise ValueError(f"vgg16_mod needs data.image_size >= {2**N_BLOCKS}, got {image_size}")
        unknown = sorted(set(trainable_blocks) - set(range(1, N_BLOCKS + 1)))
        if unknown:
            raise ValueError(f"model.arch.trainable_blocks: VGG16 has blocks 1–{N_BLOCKS}, got {unknown}")
        self.backbone = timm.create_model("vgg16", pretrained=pretrained, num_classes=0)
        # Only the convolutional part is used: timm's 7×7-conv MLP (its fc6/fc7) would hold 120 M
        # parameters that never see a gradient.
        self.backbone.pre_logits = nn.Identity()
        for block, layers in enumerate(self.conv_blocks(), start=1):
            for layer in layers:
                layer.requires_grad_(block in trainable_blocks)
        self.image_size = image_size
        self.grid = grid
        self.channels = 512
        self.num_features = hidden
        self.dense = nn.Linear(self.channels * grid * grid, hidden)
        self.act = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden, num_classes)

    def conv_blocks(self) -> list[list[nn.Module]]:
        """The layers of blocks 1–5 of ``backbone.features`` (each block ends with its max-pool)."""
        blocks: list[list[nn.Module]] = [[]]
        for layer in self.backbone.features:
            blocks[-1].append(layer)
            if isinstance(layer, nn.MaxPool2d):
                blocks.append([])
        return [b for b in blocks if b]

    def gradcam_layer(self) -> nn.Module:
        """Block 5's output (its max-pool, Keras's block5_pool): every channel of the map the dense
        head flattens."""
        return self.conv_blocks()[-1][-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.features(x)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if features.shape[-2:] != (self.grid, self.grid):
            raise ValueError(
                f"vgg16_mod was built for {self.image_size} px inputs ({self.grid}×{self.grid} feature map), "
                f"got a {tuple(features.shape[-2:])} map: its dense layer fixes the input size"
            )
        x = self.drop(self.act(self.dense(features.flatten(1))))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
