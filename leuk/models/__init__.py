"""Architectures (plain ``nn.Module``s, registered by name) and the LightningModule that trains them."""

from leuk.models import mcb_hypernet  # noqa: F401  (registers the architecture)
from leuk.models.registry import create_model, model_names, register_model

__all__ = ["create_model", "model_names", "register_model"]
