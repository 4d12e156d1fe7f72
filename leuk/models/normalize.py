"""Input normalization as the network's first layer.

``Normalized(body, mean, std)`` takes pixels on the 0–255 scale (uint8, or float as after adding
noise), scales them to [0, 1] and normalizes them with the model's statistics, so that training,
evaluation, prediction, the noise table and Grad-CAM all feed the architecture the same way.

The architecture is ``net.body``. Attributes the wrapper does not have (``backbone``,
``gradcam_layer``, ``regularization_loss``, ``forward_head``, ``get_classifier`` ...) are looked up on
the body, so code written against the bare architecture finds them on the wrapper too;
``forward_features`` normalizes first, like ``forward``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn


class Normalized(nn.Module):
    def __init__(
        self, body: nn.Module, mean: Sequence[float], std: Sequence[float], channels_last: bool = False
    ) -> None:
        super().__init__()
        self.body = body
        # Not persistent: the statistics come from the model config, and checkpoints keep the
        # architecture's own keys (under ``net.body.``).
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1), False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1), False)
        self.channels_last = channels_last

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float().div(255.0) - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.normalize(x))

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            body = self.__dict__["_modules"].get("body")
            if body is None or name.startswith("__"):
                raise
        attr = getattr(body, name)
        if name == "forward_features" and callable(attr):
            features: Callable[[torch.Tensor], torch.Tensor] = attr
            return lambda x: features(self.normalize(x))
        return attr
