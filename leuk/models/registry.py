"""Architectures by name, as in timm: ``@register_model("name")`` on a plain ``nn.Module`` class.

``create_model`` is the one way the framework builds a network. A name that leuk does not register
falls through to timm (any ``timm.list_models()`` name works as a baseline).
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from leuk.utils.errors import UserConfigError, UserError

log = logging.getLogger(__name__)

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}

ModelT = TypeVar("ModelT", bound=Callable[..., nn.Module])


class UnknownModelError(UserConfigError, ValueError):
    """A model name that neither leuk nor timm knows."""


class PretrainedWeightsError(UserError, RuntimeError):
    """ImageNet weights could not be had (offline, or no weights for that name)."""


class RandomFrozenError(UserConfigError, ValueError):
    """A run would keep randomly initialized parameters frozen (see ``check_weights_policy``)."""


class WeightsFileError(UserError, ValueError):
    """``model.weights`` names a file that is missing, holds no state dict, or fits no tensor."""


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
    if pretrained and weights:
        # A local file is one way to supply the ImageNet weights: nothing is downloaded then.
        log.info("model.weights=%s supplies the weights: timm's ImageNet weights are not fetched", weights)
    fetch = pretrained and not weights
    if "pretrained" in params:
        kwargs["pretrained"] = fetch
    elif pretrained:
        raise PretrainedWeightsError(
            f"model '{name}' has no ImageNet weights to load (set model.pretrained=false)"
        )
    try:
        model = entry(num_classes=num_classes, **kwargs)
    except Exception as exc:
        if fetch and _looks_like_download_failure(exc):
            tags = _tags_or_empty(name, image_size, arch)
            raise PretrainedWeightsError(
                f"could not fetch the ImageNet weights of model '{name}' "
                f"({type(exc).__name__}: {exc}). {_how_to_supply(tags, name, frozen=False)}"
            ) from exc
        raise
    if weights:
        load_weights(model, weights)
    return model


# ---------------------------------------------------------------- the weights policy
@dataclass(frozen=True)
class WeightsPlan:
    """What a model config starts from, worked out before anything is decoded or trained."""

    # timm's pretrained weights the architecture asks for with model.pretrained=true ("vgg16.tv_in1k").
    tags: list[str]
    # Parameters frozen at some point of the run (by the architecture, or for the first
    # model.freeze_backbone_epochs epochs), and those of them that no weights source covers.
    frozen: int
    random_frozen: int
    # Where the random frozen parameters are: "<count> <why frozen> in <modules>".
    random_parts: list[str] = field(default_factory=list)


def pretrained_tag(module: nn.Module) -> str | None:
    """timm's name for the weights ``module`` loads with pretrained=True (``architecture.tag``)."""
    cfg = getattr(module, "pretrained_cfg", None)
    if not isinstance(cfg, Mapping) or not (cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("file")):
        return None
    arch, tag = cfg.get("architecture"), cfg.get("tag")
    return f"{arch}.{tag}" if tag else str(arch)


def _timm_parts(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """The outermost submodules built by timm that come with pretrained weights."""
    parts: list[tuple[str, nn.Module]] = []
    for name, module in net.named_modules():
        if any(name == p or name.startswith(p + ".") for p, _ in parts if p):
            continue
        if pretrained_tag(module) is not None:
            parts.append((name, module))
    return parts


def backbone_phase_parameters(net: nn.Module) -> list[str]:
    """Names (in ``net``) of the parameters model.freeze_backbone_epochs freezes: the backbone's,
    without its own new classifier, and without those the architecture already keeps frozen."""
    backbone = getattr(net, "backbone", None)
    if not isinstance(backbone, nn.Module):
        return []
    get_classifier = getattr(backbone, "get_classifier", None)
    classifier = get_classifier() if callable(get_classifier) else None
    head = {id(p) for p in classifier.parameters()} if isinstance(classifier, nn.Module) else set()
    ids = {id(p) for p in backbone.parameters() if p.requires_grad and id(p) not in head}
    return [n for n, p in net.named_parameters() if id(p) in ids]


def _build_skeleton(name: str, image_size: int | None, arch: Mapping[str, Any]) -> nn.Module:
    """The architecture without weights: on the meta device (instant, no memory) where it builds."""
    try:
        with torch.device("meta"):
            return create_model(name, 2, image_size=image_size, **arch)
    except (NotImplementedError, RuntimeError):
        return create_model(name, 2, image_size=image_size, **arch)


def _tags_or_empty(name: str, image_size: int | None, arch: Mapping[str, Any]) -> list[str]:
    try:
        net = _build_skeleton(name, image_size, arch)
    except Exception:
        # Only for the message: the construction's own error is the one raised.
        return []
    return [t for _, m in _timm_parts(net) if (t := pretrained_tag(m))]


def _offline() -> bool:
    import huggingface_hub.constants as hf

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    return bool(hf.HF_HUB_OFFLINE) or flag


def _cached(module: nn.Module) -> bool:
    """Whether timm would find ``module``'s pretrained weights without the network."""
    import huggingface_hub.constants as hf
    from huggingface_hub import try_to_load_from_cache

    cfg = module.pretrained_cfg
    if cfg.get("file"):
        return Path(cfg["file"]).is_file()
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        names = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else []
        names += ["model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"]
        for filename in names:
            hit = try_to_load_from_cache(hub_id, filename, cache_dir=hf.HF_HUB_CACHE)
            if isinstance(hit, str) and Path(hit).is_file():
                return True
    url = cfg.get("url")
    if url:
        return (Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name).is_file()
    return False


def _how_to_supply(tags: list[str], name: str, frozen: bool) -> str:
    wanted = ", ".join(tags) if tags else f"the ImageNet weights of model '{name}'"
    file_hint = f" (e.g. the model.safetensors of https://huggingface.co/timm/{tags[0]})" if tags else ""
    fetch_hint = (
        f": `python -c \"import timm; timm.create_model('{tags[0]}', pretrained=True)\"` where the "
        "internet is reachable, then copy its HF cache (~/.cache/huggingface) here or point "
        "HF_HOME/HF_HUB_CACHE at it"
        if tags
        else ""
    )
    scratch = "model.pretrained=false model.allow_random_frozen=true" if frozen else "model.pretrained=false"
    return (
        f"model.pretrained=true needs {wanted} (or train from scratch knowingly: {scratch}). "
        f"Supply them with model.weights=<a local .safetensors/.pth state dict of that network>"
        f"{file_hint}, or with a filled HF cache{fetch_hint}."
    )


def _matched_names(
    target: nn.Module, state: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The tensors of ``state`` that fit ``target`` by name and shape (after stripping the prefix
    of a whole-model file), and the names that exist with another shape."""
    own = target.state_dict()
    if not set(state) & set(own):
        for prefix in ("backbone.", "net.backbone.", "net.", "model."):
            stripped = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if set(stripped) & set(own):
                state = stripped
                break
    matched = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    mismatched = sorted(k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape))
    return matched, mismatched


def _weights_target(model: nn.Module) -> tuple[nn.Module, str]:
    backbone = getattr(model, "backbone", None)
    return (backbone, "backbone.") if isinstance(backbone, nn.Module) else (model, "")


def check_weights_policy(model_cfg: Mapping[str, Any], image_size: int | None = None) -> WeightsPlan:
    """Refuse, at start, a model config whose weights cannot be had or that freezes random weights.

    * ``model.pretrained=true`` without ``model.weights``, offline (HF_HUB_OFFLINE) and with
      timm's weights in no local cache: ``PretrainedWeightsError`` naming them and how to supply
      them. (Online, the model's construction fetches them.)
    * Parameters frozen by the architecture (``requires_grad`` off, e.g. the modified VGG16's
      ``trainable_blocks``) or for the first ``model.freeze_backbone_epochs`` epochs, that neither
      timm's ImageNet weights nor the weights file cover: ``RandomFrozenError``, unless
      ``model.allow_random_frozen=true``, which logs a warning with their number instead.
    """
    name = str(model_cfg["name"])
    arch = dict(model_cfg.get("arch") or {})
    pretrained = bool(model_cfg.get("pretrained", False))
    weights = model_cfg.get("weights")
    freeze_epochs = int(model_cfg.get("freeze_backbone_epochs", 0) or 0)
    net = _build_skeleton(name, image_size, arch)
    parts = _timm_parts(net)
    tags = [t for _, m in parts if (t := pretrained_tag(m))]

    params = dict(net.named_parameters())
    why: dict[str, str] = {n: "frozen by the architecture" for n, p in params.items() if not p.requires_grad}
    if freeze_epochs > 0:
        for n in backbone_phase_parameters(net):
            epochs = f"{freeze_epochs} epoch" + ("s" if freeze_epochs != 1 else "")
            why.setdefault(n, f"frozen for the first {epochs} (model.freeze_backbone_epochs)")

    covered: set[str] = set()
    if weights:
        target, prefix = _weights_target(net)
        matched, _ = _matched_names(target, read_state_dict(weights))
        covered = {prefix + k for k in matched}
    elif pretrained:
        covered = {f"{p}.{n}" if p else n for p, m in parts for n, _ in m.named_parameters()}
        missing = [pretrained_tag(m) or "" for _, m in parts if not _cached(m)] if _offline() else []
        if missing:
            raise PretrainedWeightsError(
                "this run is offline (HF_HUB_OFFLINE=1) and the Hugging Face cache holds no copy of "
                f"{', '.join(missing)}. {_how_to_supply(missing, name, frozen=bool(why))}"
            )
    random = {n: w for n, w in why.items() if n not in covered}
    count = sum(params[n].numel() for n in random)
    by_reason: dict[str, tuple[int, list[str]]] = {}
    for n, w in random.items():
        total, modules = by_reason.get(w, (0, []))
        module = n.rsplit(".", 1)[0]
        by_reason[w] = (total + params[n].numel(), modules if module in modules else [*modules, module])
    described = [
        f"{total:,} {w} in {', '.join(mods[:3])}" + (f", … ({len(mods)} modules)" if len(mods) > 3 else "")
        for w, (total, mods) in by_reason.items()
    ]
    plan = WeightsPlan(tags, sum(params[n].numel() for n in why), count, described)
    if count:
        where = "; ".join(described)
        source = (
            f"model.weights={weights} does not hold them"
            if weights
            else "no model.pretrained=true or model.weights=<file> gives them weights"
        )
        if not model_cfg.get("allow_random_frozen", False):
            raise RandomFrozenError(
                f"model '{name}' would keep {count:,} parameters frozen at their random "
                f"initialization ({where}): {source}. Start them from weights (model.pretrained=true, "
                "or model.weights=<file>), let them train (model.arch.trainable_blocks, "
                "model.freeze_backbone_epochs=0), or run so knowingly with model.allow_random_frozen=true."
            )
        log.warning(
            "model.allow_random_frozen=true: %s parameters of model '%s' stay frozen at their random "
            "initialization (%s)",
            f"{count:,}",
            name,
            where,
        )
    return plan


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
        raise WeightsFileError(f"model.weights: no such file '{path}'")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsFileError(f"model.weights: '{path}' does not hold a state dict")
    return state


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load local weights into ``model.backbone`` (or the whole model) by name.

    Tensors whose shape does not match (a classifier trained for another number of classes) are
    dropped and reported; a file that shares no weight with the model is an error.
    """
    target, _ = _weights_target(model)
    state = read_state_dict(path)
    own = target.state_dict()
    # Files saved from the whole model are accepted as well as from the bare backbone.
    matched, mismatched = _matched_names(target, state)
    if not matched:
        raise WeightsFileError(
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
