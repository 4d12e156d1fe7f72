"""Checkpoints: a trained model reloaded for evaluation and prediction, and the resume check.

A checkpoint carries what rebuilds its network without Hydra (``checkpoint["leuk"]``, written by
``leuk.callbacks.CheckpointInfo``: the resolved model config, num_classes, image_size,
class_names, preprocess_steps, format_version). Checkpoints written before that (format 1: the
same values as the LightningModule's hyperparameters, the network's keys as ``net.<arch>``) load
too; a format this version does not know is refused, naming the file and the version.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from leuk.callbacks.checkpoint_info import FORMAT_VERSION
from leuk.utils.errors import UserError


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used: missing, unreadable, not leuk's, or from another version."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint of one model given to a run of another."""


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


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"ckpt_path: no such checkpoint '{path}'")
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"ckpt_path: '{path}' cannot be read ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"ckpt_path: '{path}' is not a leuk checkpoint (not a checkpoint dict)")
    return ckpt


def checkpoint_info(ckpt: Mapping[str, Any], path: Path) -> tuple[dict[str, Any], int]:
    """The checkpoint's rebuild values and its format version (1 for checkpoints before issue 16)."""
    info = ckpt.get("leuk")
    if isinstance(info, Mapping):
        version = int(info.get("format_version", 0))
        if version != FORMAT_VERSION:
            raise CheckpointError(
                f"ckpt_path: '{path}' is a leuk checkpoint of format {version}; this leuk reads "
                f"formats 1 and {FORMAT_VERSION}"
            )
        return dict(info), version
    hp = ckpt.get("hyper_parameters")
    keys = ("model", "num_classes", "class_names", "image_size")
    if isinstance(hp, Mapping) and all(k in hp for k in keys):
        return {**{k: hp[k] for k in keys}, "preprocess_steps": hp.get("preprocess_steps")}, 1
    raise CheckpointError(f"ckpt_path: '{path}' is not a leuk checkpoint (no model description in it)")


def _net_state(state: Mapping[str, torch.Tensor], version: int) -> dict[str, torch.Tensor]:
    """The network's tensors of a checkpoint, keyed as in ``Normalized`` (``body.<arch>``)."""
    net = {k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")}
    if version == 1:
        # Format 1 held the bare architecture as ``net``; it is ``net.body`` now.
        net = {f"body.{k}": v for k, v in net.items()}
    return net


def load_trained(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> TrainedModel:
    """Rebuild the module of ``ckpt_path`` without fetching pretrained weights; eval mode."""
    from leuk.composition import build_net
    from leuk.models.module import Classifier

    path = Path(ckpt_path).expanduser()
    ckpt = _read(path)
    info, version = checkpoint_info(ckpt, path)
    model = {**info["model"], "pretrained": False, "weights": None}
    net = build_net(model, int(info["num_classes"]), int(info["image_size"]))
    try:
        net.load_state_dict(_net_state(ckpt.get("state_dict", {}), version))
    except RuntimeError as exc:
        raise CheckpointError(
            f"ckpt_path: '{path}' (format {version}) does not fit model '{model['name']}': {exc}"
        ) from exc
    module = Classifier(net=net, criterion=nn.CrossEntropyLoss(), class_names=info["class_names"])
    module.to(map_location).eval()
    return TrainedModel(
        module=module,
        net=net,
        model_name=str(model["name"]),
        class_names=list(info["class_names"]),
        image_size=int(info["image_size"]),
        preprocess_steps=info.get("preprocess_steps"),
    )


def check_checkpoint(ckpt_path: str, model_name: str) -> None:
    """Refuse a checkpoint to resume from that is missing or belongs to another architecture, naming
    both (before anything is built around it)."""
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"ckpt_path: no such checkpoint '{path}'")
    ckpt = _read(path)
    info = ckpt.get("leuk")
    saved = ckpt.get("leuk_model_name") or ckpt.get("hyper_parameters", {}).get("model", {}).get("name")
    if saved is None:
        raise CheckpointMismatchError(f"ckpt_path: '{path}' is not a leuk checkpoint (no model name in it)")
    if saved != model_name:
        raise CheckpointMismatchError(
            f"ckpt_path: '{path}' holds a '{saved}' model, but this run builds model '{model_name}'; "
            f"run with model={saved} or pick a checkpoint of {model_name}"
        )
    if not isinstance(info, Mapping):
        # Its keys (net.<arch>) and hyperparameters are those of the LightningModule before
        # issue 16: evaluation reads it (load_trained), training cannot resume from it.
        raise CheckpointError(
            f"ckpt_path: '{path}' is a leuk checkpoint of format 1; training resumes from format "
            f"{FORMAT_VERSION} only (evaluate it with leuk.eval, or train anew)"
        )
