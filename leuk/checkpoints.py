"""A trained model, reloaded from its checkpoint for evaluation and prediction."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, unreadable, not leuk's, or from another version."""


@dataclass
class TrainedModel:
    """What evaluation and prediction need from a checkpoint."""

    module: L.LightningModule  # predict_step((uint8 NCHW, labels), i) -> softmax probabilities N×C
    net: nn.Module
    model_name: str
    class_names: list[str]
    image_size: int
    # The preprocessing steps the training images went through (plain config), or None.
    preprocess_steps: Any


def load_trained(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> TrainedModel:
    """Rebuild the module of ``ckpt_path`` without fetching pretrained weights; eval mode."""
    from leuk.models.module import Classifier

    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"ckpt_path: no such checkpoint '{path}'")
    try:
        module = Classifier.from_checkpoint(str(path), map_location=map_location)
    except KeyError as exc:
        raise CheckpointError(f"ckpt_path: '{path}' is not a leuk checkpoint (it lacks {exc})") from exc
    module.eval()
    hp = module.hparams
    return TrainedModel(
        module=module,
        net=module.net,
        model_name=module.model_name,
        class_names=list(hp.class_names),
        image_size=int(hp.image_size),
        preprocess_steps=hp.get("preprocess_steps"),
    )
