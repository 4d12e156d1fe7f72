"""Any timm model as a baseline classifier (``model=timm model.name=<timm name>``)."""

from __future__ import annotations

import timm
import torch
from torch import nn


class TimmClassifier(nn.Module):
    """A timm classification model; ``backbone`` is the timm model so local weights load into it."""

    def __init__(
        self,
        num_classes: int,
        model_name: str,
        pretrained: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.backbone = timm.create_model(
            model_name, pretrained=pretrained, num_classes=num_classes, drop_rate=dropout
        )
        self.num_features = self.backbone.num_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.backbone.forward_head(features, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)
