"""Architectures by name, as in timm: ``@register_model("name")`` on a plain ``nn.Module`` class.

``create_model`` is the one way the framework builds a network. A name that leuk does not register
falls through to timm (any ``timm.list_models()`` name works as a baseline).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

log = logging.getLogger(__name__)

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}

ModelT = TypeVar("ModelT", bound=Callable[..., nn.Module])


class UnknownModelError(ValueError):
    """A model name that neither leuk nor timm knows."""


class PretrainedWeightsError(RuntimeError):
    """ImageNet weights could not be had (offline, or no weights for that name)."""


def register_model(name: str) -> Callable[[ModelT], ModelT]:
    def wrap(fn: ModelT) -> ModelT:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is registered twice")
        _REGISTRY[name] = fn
        return fn

    return wrap


def model_names() -> list[str]:
    """Names leuk registers (timm's own names work too)."""
    _import_architectures()
    return sorted(_REGISTRY)


def _import_architectures() -> None:
    import leuk.models  # noqa: F401  (registers every architecture module)


def get_model_entry(name: str) -> Callable[..., nn.Module]:
    """The constructor registered under ``name``, or a timm factory for a timm model name."""
    _import_architectures()
    if name in _REGISTRY:
        return _REGISTRY[name]
    import timm

    if timm.is_model(name):
        from leuk.models.timm_classifier import TimmClassifier

        return TimmClassifier
    raise UnknownModelError(
        f"unknown model '{name}'. leuk models: {', '.join(sorted(_REGISTRY))}; "
        "any timm model name also works (see timm.list_models())."
    )


def create_model(
    name: str,
    num_classes: int,
    *,
    image_size: int | None = None,
    pretrained: bool = False,
    weights: str | None = None,
    **arch: Any,
) -> nn.Module:
    """Build architecture ``name`` for ``num_classes`` classes.

    Arguments the constructor declares among ``image_size``/``pretrained``/``model_name`` are
    passed through; everything else comes from the model config's ``arch`` node.
    """
    entry = get_model_entry(name)
    params = inspect.signature(entry).parameters
    kwargs: dict[str, Any] = dict(arch)
    if "image_size" in params:
        kwargs["image_size"] = image_size
    if "model_name" in params and name not in _REGISTRY:
        kwargs["model_name"] = name
    if "pretrained" in params:
        kwargs["pretrained"] = pretrained
    elif pretrained:
        raise ValueError(f"model '{name}' has no ImageNet weights to load (set model.pretrained=false)")
    try:
        model = entry(num_classes=num_classes, **kwargs)
    except Exception as exc:
        if pretrained and _looks_like_download_failure(exc):
            raise PretrainedWeightsError(
                f"could not fetch ImageNet weights for model '{name}' ({type(exc).__name__}: {exc}). "
                "Without internet access, either train from scratch with model.pretrained=false or "
                "load a local file with model.weights=/path/to/weights.safetensors (or .pth)."
            ) from exc
        raise
    if weights:
        load_weights(model, weights)
    return model


def _looks_like_download_failure(exc: BaseException) -> bool:
    names = {type(e).__name__ for e in _chain(exc)}
    download = {
        "LocalEntryNotFoundError",
        "ConnectionError",
        "OfflineModeIsEnabled",
        "HfHubHTTPError",
        "URLError",
        "MaxRetryError",
        "NameResolutionError",
        "TimeoutError",
        "gaierror",
    }
    return bool(names & download) or "offline" in str(exc).lower() or "connect" in str(exc).lower()


def _chain(exc: BaseException | None) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or ``.pth``/``.pt``/``.bin`` state dict (or a Lightning checkpoint)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model.weights: no such file '{path}'")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"model.weights: '{path}' does not hold a state dict")
    return state


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load local weights into ``model.backbone`` (or the whole model) by name.

    Tensors whose shape does not match (a classifier trained for another number of classes) are
    dropped and reported; a file that shares no weight with the model is an error.
    """
    target: nn.Module = getattr(model, "backbone", None) or model
    state = read_state_dict(path)
    own = target.state_dict()
    # Accept files saved from the whole model as well as from the bare backbone.
    if not set(state) & set(own):
        for prefix in ("backbone.", "net.backbone.", "net.", "model."):
            stripped = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if set(stripped) & set(own):
                state = stripped
                break
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    mismatched = sorted(k for k, v in state.items() if k in own and own[k].shape != v.shape)
    if not matched:
        raise ValueError(
            f"model.weights: none of the {len(state)} tensors in '{path}' fits "
            f"{type(target).__name__} (is it the weights of another architecture?)"
        )
    missing = sorted(set(own) - set(matched))
    target.load_state_dict(matched, strict=False)
    log.info(
        "loaded %d tensors from %s into %s; dropped %d of another shape (%s); %d left at their init",
        len(matched),
        path,
        type(target).__name__,
        len(mismatched),
        ", ".join(mismatched[:5]),
        len(missing),
    )
    return model
