"""Architectures (plain ``nn.Module``s, registered by name) and the LightningModule that trains them."""

# Importing each architecture module registers it.
from leuk.models import aldl, mcb_hypernet, mobilenet_m, mseenet, vgg16_mod  # noqa: F401
from leuk.models.registry import create_model, model_names, register_model

__all__ = ["create_model", "model_names", "register_model"]
