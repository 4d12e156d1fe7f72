"""CBAM, the convolutional block attention module (Woo et al., 2018): channel, then spatial attention."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

_POOLS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "avg": lambda x: x.mean(dim=(2, 3), keepdim=True),
    "max": lambda x: x.amax(dim=(2, 3), keepdim=True),
}


class ChannelAttention(nn.Module):
    """σ(Σ_pool MLP(pool(x))) per channel, one MLP (C → C/r → C, ReLU) shared by the descriptors.

    ``pools=("avg",)`` is ALDL's Eq. 17, M_c(F) = σ(MLP(AvgPool(F))); ``("avg", "max")`` is
    Woo et al.'s CBAM, which adds the max-pooled descriptor through the same MLP.
    """

    def __init__(self, channels: int, reduction: int = 16, pools: Sequence[str] = ("avg",)) -> None:
        super().__init__()
        pools = tuple(pools)
        if not pools or any(p not in _POOLS for p in pools) or len(set(pools)) != len(pools):
            raise ValueError(
                f"CBAM channel_pools must be distinct values of {sorted(_POOLS)}, got {list(pools)}"
            )
        if reduction < 1:
            raise ValueError(f"CBAM reduction must be >= 1, got {reduction}")
        self.pools = pools
        # Early stages are narrow (16–24 channels): keep at least one hidden unit.
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(sum(self.mlp(_POOLS[p](x)) for p in self.pools))


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

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        spatial_kernel: int = 7,
        channel_pools: Sequence[str] = ("avg",),
    ) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction, channel_pools)
        self.spatial = SpatialAttention(spatial_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.channel(x)
        return x * self.spatial(x)
