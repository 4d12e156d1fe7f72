"""Grey-level morphology as network layers (the morphological context block)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def dilate(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Flat grey dilation with a square structuring element: a stride-1 'same' max-pool."""
    if kernel_size % 2 == 1:
        # max_pool2d pads with -inf: a border pixel's neighbourhood is what lies inside the image.
        return F.max_pool2d(x, kernel_size, stride=1, padding=kernel_size // 2)
    pad = kernel_size // 2
    x = F.pad(x, (pad, kernel_size - 1 - pad, pad, kernel_size - 1 - pad), value=float("-inf"))
    return F.max_pool2d(x, kernel_size, stride=1)


def erode(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Flat grey erosion: ``-dilate(-x)``, an exact min-pool."""
    return -dilate(-x, kernel_size)


class MorphologicalContextBlock(nn.Module):
    """Morphological gradient ``dilate(x) - erode(x)`` (≥ 0): local contrast of cell boundaries."""

    def __init__(self, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"morph_kernel must be a positive size, got {kernel_size}")
        self.kernel_size = kernel_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dilate(x, self.kernel_size) - erode(x, self.kernel_size)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"
