"""CBAM, the convolutional block attention module (Woo et al., 2018): channel, then spatial attention."""

from __future__ import annotations

import torch
from torch import nn


class ChannelAttention(nn.Module):
    """σ(MLP(avgpool(x)) + MLP(maxpool(x))) per channel, the MLP shared by both descriptors."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        # Early stages are narrow (16–24 channels): keep at least one hidden unit.
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        mx = self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return torch.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    """σ(conv_k×k([mean_c(x); max_c(x)])) per position."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"CBAM spatial kernel must be odd, got {kernel_size}")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(maps))


class CBAM(nn.Module):
    """x' = M_c(x) ⊙ x, then x'' = M_s(x') ⊙ x' (same shape as the input)."""

    def __init__(self, channels: int, reduction: int = 16, spatial_kernel: int = 7) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(spatial_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.channel(x)
        return x * self.spatial(x)
