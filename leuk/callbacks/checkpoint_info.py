"""What a checkpoint needs to rebuild its network without Hydra (read by ``leuk.checkpoints``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L

# Bumped when what load_trained reads from a checkpoint changes. Checkpoints written before issue 16
# carry no "leuk" entry and count as format 1.
FORMAT_VERSION = 2


class CheckpointInfo(L.Callback):
    """Writes ``checkpoint["leuk"]``: plain values only (the resolved model config, num_classes,
    image_size, class_names, preprocess_steps, format_version)."""

    def __init__(self, info: Mapping[str, Any]) -> None:
        self.info = {**info, "format_version": FORMAT_VERSION}

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["leuk"] = self.info
        # Read by leuk.checkpoints.check_checkpoint, also in checkpoints of format 1.
        checkpoint["leuk_model_name"] = self.info["model"]["name"]
