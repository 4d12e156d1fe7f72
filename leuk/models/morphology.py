"""Grey-level morphology as network layers (the morphological context block)."""

from __future__ import annotations

from typing import Literal

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


ErosionMode = Literal["exact", "eq7_literal"]


class MorphologicalContextBlock(nn.Module):
    """Morphological gradient ``dilate(x) - erode(x)`` (≥ 0): local contrast of cell boundaries.

    ``erosion="eq7_literal"`` takes MCB-HyperNet's Eq. 7 at its word, E = MaxPool(-x) (the negated
    erosion, -min), so that the block returns max + min; ``"exact"`` is the min of its Eq. 6.
    """

    def __init__(self, kernel_size: int = 3, erosion: ErosionMode = "exact") -> None:
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"morph_kernel must be a positive size, got {kernel_size}")
        if erosion not in ("exact", "eq7_literal"):
            raise ValueError(f"model.arch.erosion must be exact or eq7_literal; got '{erosion}'")
        self.kernel_size = kernel_size
        self.erosion = erosion

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dilated = dilate(x, self.kernel_size)
        if self.erosion == "eq7_literal":
            return dilated - dilate(-x, self.kernel_size)
        return dilated - erode(x, self.kernel_size)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, erosion={self.erosion}"
