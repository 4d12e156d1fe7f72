"""Checkpoints: a trained model reloaded for evaluation and prediction, and the resume check.

A checkpoint carries what rebuilds its network without Hydra (``checkpoint["leuk"]``, written by
``leuk.callbacks.CheckpointInfo``: the resolved model config, num_classes, image_size,
class_names, preprocess_steps, format_version). Checkpoints written before that (format 1: the
same values as the LightningModule's hyperparameters, the network's keys as ``net.<arch>``) load
too; a format this version does not know is refused, naming the file and the version. A file that
cannot be used (empty, truncated, not a checkpoint, its description or weights missing) is refused in
one line naming it and what is wrong (``CheckpointError``), without torch's or pickle's traceback.
"""

from __future__ import annotations

import zipfile
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


# How a file torch.save wrote begins: a zip archive (torch >= 1.6), or a pickle (older torch).
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_MAGIC = b"\x80"
# Where a checkpoint's rebuild values are (format 2), and what they must hold.
INFO_KEYS = ("model", "num_classes", "class_names", "image_size")
# What to do with a checkpoint that cannot be read.
_INSTEAD = "use another checkpoint of the run (checkpoints/last.ckpt or the best one), or train anew"


def _first_line(error: BaseException, limit: int = 200) -> str:
    text = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {text[:limit]}"


def _unreadable(path: Path, size: int, error: BaseException) -> str:
    """What is wrong with a file torch.load could not read, judged by how it begins and ends."""
    with open(path, "rb") as f:
        head = f.read(len(ZIP_MAGIC))
    if head == ZIP_MAGIC and not zipfile.is_zipfile(path):
        # The zip's directory comes last: a save cut short (killed, disk full) has none.
        return (
            f"ckpt_path: '{path}' is truncated ({size} bytes, its end is missing): a save cut short; "
            + _INSTEAD
        )
    if head == ZIP_MAGIC or head.startswith(PICKLE_MAGIC):
        return (
            f"ckpt_path: '{path}' is damaged or unreadable by this torch ({_first_line(error)}); {_INSTEAD}"
        )
    return f"ckpt_path: '{path}' is not a PyTorch checkpoint ({_first_line(error)})"


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"ckpt_path: no such checkpoint '{path}'")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"ckpt_path: '{path}' is empty (0 bytes): a save cut short; {_INSTEAD}")
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        # Its cause is in the message; torch's and pickle's frames below it would only bury it.
        raise CheckpointError(_unreadable(path, size, exc)) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"ckpt_path: '{path}' is not a leuk checkpoint (not a checkpoint dict)")
    return ckpt


def _require_weights(ckpt: Mapping[str, Any], path: Path) -> Mapping[str, Any]:
    state = ckpt.get("state_dict")
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"ckpt_path: '{path}' holds no network weights (no state_dict); {_INSTEAD}")
    return state


def checkpoint_info(ckpt: Mapping[str, Any], path: Path) -> tuple[dict[str, Any], int]:
    """The checkpoint's rebuild values and its format version (1 for checkpoints before issue 16)."""
    info = ckpt.get("leuk")
    if isinstance(info, Mapping):
        try:
            version = int(info.get("format_version", 0))
        except (TypeError, ValueError):
            raise CheckpointError(
                f"ckpt_path: '{path}' is a damaged leuk checkpoint (format_version "
                f"{info.get('format_version')!r} is not a number)"
            ) from None
        if version != FORMAT_VERSION:
            raise CheckpointError(
                f"ckpt_path: '{path}' is a leuk checkpoint of format {version}; this leuk reads "
                f"formats 1 and {FORMAT_VERSION}"
            )
        _check_info(info, path)
        return dict(info), version
    hp = ckpt.get("hyper_parameters")
    if isinstance(hp, Mapping) and all(k in hp for k in INFO_KEYS):
        _check_info(hp, path)
        return {**{k: hp[k] for k in INFO_KEYS}, "preprocess_steps": hp.get("preprocess_steps")}, 1
    raise CheckpointError(f"ckpt_path: '{path}' is not a leuk checkpoint (no model description in it)")


def _check_info(info: Mapping[str, Any], path: Path) -> None:
    missing = [k for k in INFO_KEYS if k not in info]
    model = info.get("model")
    if not missing and not (isinstance(model, Mapping) and isinstance(model.get("name"), str)):
        missing = ["model.name"]
    if missing:
        raise CheckpointError(
            f"ckpt_path: '{path}' is a damaged leuk checkpoint (its model description lacks "
            f"{', '.join(missing)}); {_INSTEAD}"
        )


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
    state = _net_state(_require_weights(ckpt, path), version)
    model = {**info["model"], "pretrained": False, "weights": None}
    net = build_net(model, int(info["num_classes"]), int(info["image_size"]))
    try:
        net.load_state_dict(state)
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
    hp = ckpt.get("hyper_parameters")
    hp_model = hp.get("model") if isinstance(hp, Mapping) else None
    saved = ckpt.get("leuk_model_name") or (hp_model.get("name") if isinstance(hp_model, Mapping) else None)
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
    checkpoint_info(ckpt, path)
    _require_weights(ckpt, path)
