"""The shape of leuk's composed configs, checked before anything runs."""

from __future__ import annotations

from typing import Any, Literal

from omegaconf import DictConfig, ListConfig

from leuk.config.validate import (
    ConfigError,
    check_call_arguments,
    check_keys,
    check_nested,
    check_sigmas,
    check_target_node,
)

TOP_LEVEL: dict[str, Any] = {
    "data": dict,
    "model": dict,
    "augmentation": dict,
    "preprocess": dict,
    "loss": dict,
    "optimizer": dict,
    "scheduler": dict,
    "trainer": dict,
    "logger": dict | None,
    "callbacks": dict | None,
    "paths": dict,
    "hydra": dict,
    "seed": int,
    "tags": list,
    "task_name": str,
    "train": bool,
    "test": bool,
    "test_checkpoint": Literal["best", "last"],
    "ckpt_path": str | None,
    "print_config": bool,
    "optimized_metric": str | None,
    "noise_sigmas": list,
}

MODEL: dict[str, Any] = {
    "name": str,
    "pretrained": bool,
    "weights": str | None,
    "allow_random_frozen": bool,
    "compile": bool,
    "channels_last": bool,
    "mean": list,
    "std": list,
    "freeze_backbone_epochs": int,
    "backbone_lr_scale": float,
    "arch": dict,
    # What the paper used (input size, ImageNet start, loss, ...): a record, not read by the code.
    "paper": dict | None,
}

SCHEDULER: dict[str, Any] = {
    "scheduler": dict | None,
    "interval": Literal["epoch", "step"],
    "monitor": str,
    "frequency": int,
}

# Arguments leuk passes to constructors itself; a config must not set them.
DATA_SUPPLIED = ("seed", "train_transform", "preprocess")
MODEL_SUPPLIED = ("num_classes", "image_size", "pretrained", "model_name")


def _check_model(model: DictConfig, problems: list[str]) -> None:
    from leuk.models.registry import UnknownModelError, get_model_entry

    check_keys(model, "model", MODEL, problems)
    for key in ("mean", "std"):
        if key in model and len(model[key]) != 3:
            problems.append(f"model.{key}: needs 3 values (one per RGB channel), got {len(model[key])}")
    name = model.get("name")
    if not isinstance(name, str):
        return
    try:
        entry = get_model_entry(name)
    except UnknownModelError as exc:
        problems.append(f"model.name: {exc}")
        return
    arch = model.get("arch") or DictConfig({})
    target = f"{getattr(entry, '__module__', '')}.{getattr(entry, '__name__', name)}"
    check_call_arguments(entry, target, arch, "model.arch", problems, supplied=MODEL_SUPPLIED, partial=True)


def _check_named_targets(node: Any, path: str, problems: list[str]) -> None:
    if node is None:
        return
    if not isinstance(node, DictConfig):
        problems.append(f"{path}: expected a mapping of named entries")
        return
    for name in node:
        entry = node[name]
        if entry is None:
            continue
        if not isinstance(entry, DictConfig) or "_target_" not in entry:
            problems.append(f"{path}.{name}: expected a node with a _target_ (or null)")
            continue
        check_target_node(entry, f"{path}.{name}", problems)


def validate_train_config(cfg: DictConfig, extra_top_level: dict[str, Any] | None = None) -> None:
    """Raise ``ConfigError`` listing every problem of a composed training config."""
    problems: list[str] = []
    check_keys(cfg, "", {**TOP_LEVEL, **(extra_top_level or {})}, problems)
    if "data" in cfg:
        check_target_node(cfg.data, "data", problems, supplied=DATA_SUPPLIED)
    if "model" in cfg:
        _check_model(cfg.model, problems)
    if "augmentation" in cfg:
        check_keys(cfg.augmentation, "augmentation", {"transforms": list}, problems)
        check_nested(cfg.augmentation.get("transforms"), "augmentation.transforms", problems)
    if "preprocess" in cfg:
        check_keys(cfg.preprocess, "preprocess", {"steps": list}, problems)
        steps = cfg.preprocess.get("steps")
        # check_nested checks each step's _target_ node; a step without one would never be built.
        for i, step in enumerate(steps if isinstance(steps, ListConfig) else []):
            if not (isinstance(step, DictConfig) and "_target_" in step):
                problems.append(f"preprocess.steps[{i}]: expected a node with a _target_")
        check_nested(steps, "preprocess.steps", problems)
    for group in ("loss", "optimizer", "trainer"):
        if group in cfg:
            check_target_node(cfg[group], group, problems)
    if "scheduler" in cfg:
        check_keys(cfg.scheduler, "scheduler", SCHEDULER, problems)
        if cfg.scheduler.get("scheduler"):
            check_target_node(cfg.scheduler.scheduler, "scheduler.scheduler", problems)
    _check_named_targets(cfg.get("logger"), "logger", problems)
    _check_named_targets(cfg.get("callbacks"), "callbacks", problems)
    try:
        check_sigmas(cfg.get("noise_sigmas"))
    except ValueError as err:
        problems.append(str(err))
    if problems:
        raise ConfigError(problems)
