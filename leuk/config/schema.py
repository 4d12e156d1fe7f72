"""The typed shape of leuk's composed configs, checked before anything runs.

Each entry point's config is a dataclass below (``TrainConfig``, ``EvalConfig``, ``PredictConfig``,
``BenchConfig``, ``PreviewConfig``, ``InspectConfig``); plain nodes nest as dataclasses (``ModelConfig``,
``SchedulerConfig``, ...). The checks are derived from their fields and type hints; how a field is
checked beyond its type lives in its ``metadata`` (see ``leuk.config.validate.check_fields``):
``target`` (a ``_target_`` node, checked against the signature of what it builds), ``targets`` (a
mapping of named ``_target_`` nodes or nulls), ``steps`` (preprocessing steps: a mapping by name,
or a list in old configs), ``nested`` (may hold ``_target_`` nodes), ``min``/``max``, ``length``,
``sigmas``, and ``example`` (shown for a required key that is still ``???``).

Validation only, not composition. The dataclasses are registered in Hydra's ConfigStore (group
``schema``; ``OmegaConf.structured`` has thereby proved that every type is one OmegaConf
understands), but no defaults list merges them into the composed config, for three reasons. A
schema in the defaults list makes Hydra stop at the first mismatch with its own message: one
problem per attempt, with no "did you mean" and no list of valid keys. OmegaConf checks a typed
field holding an interpolation (``${paths.output_dir}``, ``${data.batch_size}``) only when it is
read, so a wrong type behind an interpolation would surface deep inside a run rather than at start;
here every value is resolved and checked before anything runs. And the composed config stays plain
(strings, not Enum members), as ``.hydra/config.yaml``, checkpoints and ``leuk.report`` read it.
Validating the composed config reports every problem at once, each with its full key.

Models: the model-name and ``model.arch`` checks need the model registry. This module does not
import ``leuk.models``: ``validate_train_config`` takes the lookup as an argument, and by default
locates ``MODEL_REGISTRY`` (a dotted path, like any ``_target_``) only when the check runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from leuk.config.validate import ConfigError, check_call_arguments, check_fields, locate

# Arguments leuk passes to constructors itself; a config must not set them.
DATA_SUPPLIED = ("seed", "train_transform", "preprocess")
MODEL_SUPPLIED = ("num_classes", "image_size", "pretrained", "model_name")

# Looked up when the model check runs, never at import: config code does not import models.
MODEL_REGISTRY = "leuk.models.registry.get_model_entry"

ModelLookup = Callable[[str], Callable[..., Any]]


# How a mapping field is checked beyond its type (see the module docstring).
TARGET = {"target": True}
TARGETS = {"targets": True}


class TestCheckpoint(str, Enum):
    best = "best"
    last = "last"


class Interval(str, Enum):
    epoch = "epoch"
    step = "step"


class SplitPart(str, Enum):
    train = "train"
    val = "val"
    test = "test"


@dataclass
class ModelConfig:
    name: str = field(default=MISSING, metadata={"example": "mcb_hypernet"})
    # The smallest data.image_size the architecture runs at (null: not known, not checked).
    min_image_size: int | None = field(default=None, metadata={"min": 1})
    pretrained: bool = False
    weights: str | None = None
    allow_random_frozen: bool = False
    compile: bool = False
    channels_last: bool = False
    mean: list[float] = field(
        default_factory=lambda: [0.485, 0.456, 0.406], metadata={"length": 3, "what": "one per RGB channel"}
    )
    std: list[float] = field(
        default_factory=lambda: [0.229, 0.224, 0.225], metadata={"length": 3, "what": "one per RGB channel"}
    )
    freeze_backbone_epochs: int = 0
    backbone_lr_scale: float = 1.0
    # The architecture's own arguments: checked against the registered constructor's signature.
    arch: dict[str, Any] = field(default_factory=dict)
    # What the paper used (input size, ImageNet start, loss, ...): a record, not read by the code.
    paper: dict[str, Any] | None = None


@dataclass
class AugmentationConfig:
    transforms: list[Any] = field(default_factory=list, metadata={"nested": True})
    # The background group: a transform run first that replaces the cell's background (or null).
    background: Any = field(default=None, metadata={"nested": True})
    # The stain group: a stain-colour jitter run next (or null).
    stain: Any = field(default=None, metadata={"nested": True})


@dataclass
class PreprocessConfig:
    # An ordered mapping {name: step node or null}; a list of step nodes in configs of before
    # issue 16 (and in their checkpoints).
    steps: Any = field(default=None, metadata={"steps": True})


@dataclass
class SchedulerConfig:
    scheduler: dict[str, Any] | None = field(default=None, metadata=TARGET)
    interval: Interval = Interval.epoch
    monitor: str = "val/loss"
    frequency: int = 1


@dataclass
class TrainConfig:
    """``conf/train.yaml``: ``python -m leuk.train``."""

    data: dict[str, Any] = field(default_factory=dict, metadata={**TARGET, "supplied": DATA_SUPPLIED})
    model: ModelConfig = field(default_factory=ModelConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    loss: dict[str, Any] = field(default_factory=dict, metadata=TARGET)
    optimizer: dict[str, Any] = field(default_factory=dict, metadata=TARGET)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    trainer: dict[str, Any] = field(default_factory=dict, metadata=TARGET)
    logger: dict[str, Any] | None = field(default=None, metadata=TARGETS)
    callbacks: dict[str, Any] | None = field(default=None, metadata=TARGETS)
    paths: dict[str, Any] = field(default_factory=dict)
    hydra: dict[str, Any] = field(default_factory=dict)
    seed: int = 42
    tags: list[str] = field(default_factory=list)
    task_name: str = "train"
    train: bool = True
    test: bool = True
    test_checkpoint: TestCheckpoint = TestCheckpoint.best
    ckpt_path: str | None = None
    # true: run into a folder that holds a finished run, replacing it (leuk.utils.run_folder).
    overwrite: bool = False
    print_config: bool = False
    optimized_metric: str | None = None
    noise_sigmas: list[float] = field(default_factory=list, metadata={"sigmas": True})
    # false: no plot files (the many short option runs of the test suite skip them).
    plots: bool = True


@dataclass
class BenchSettings:
    batch_size: int = field(default=32, metadata={"min": 1})
    steps: int = field(default=20, metadata={"min": 1})
    warmup: int = field(default=5, metadata={"min": 0})
    repeats: int = field(default=2, metadata={"min": 1})
    latency_iters: int = field(default=30, metadata={"min": 1})


@dataclass
class BenchConfig(TrainConfig):
    """``conf/bench.yaml``: the training config plus ``bench``."""

    task_name: str = "bench"
    bench: BenchSettings = field(default_factory=BenchSettings)


@dataclass
class PreviewSettings:
    per_class: int = field(default=3, metadata={"min": 1})
    augmented: int = field(default=4, metadata={"min": 0})
    split: SplitPart = SplitPart.train


@dataclass
class PreviewConfig(TrainConfig):
    """``conf/preview.yaml``: the training config plus ``preview``."""

    task_name: str = "preview"
    preview: PreviewSettings = field(default_factory=PreviewSettings)


@dataclass
class InspectConfig:
    """``conf/inspect.yaml``: ``python -m leuk.cli.inspect``."""

    data: dict[str, Any] = field(default_factory=dict, metadata={**TARGET, "supplied": DATA_SUPPLIED})
    paths: dict[str, Any] = field(default_factory=dict)
    hydra: dict[str, Any] = field(default_factory=dict)
    task_name: str = "inspect"
    # How many example groups to print.
    show_groups: int = field(default=10, metadata={"min": 0})


class WandbEval(str, Enum):
    auto = "auto"
    always = "always"
    never = "never"


@dataclass
class EvalWandbConfig:
    """``eval.yaml``'s ``wandb``: whether and where the evaluation logs to W&B."""

    log: WandbEval = WandbEval.auto
    offline: bool | None = None
    project: str | None = None
    entity: str | None = None


@dataclass
class CalibrationConfig:
    """``calibration`` of ``conf/eval.yaml``."""

    n_bins: int = field(default=15, metadata={"min": 1})
    temperature_bounds: list[float] = field(default_factory=lambda: [0.05, 20.0])


@dataclass
class EvalConfig:
    """``conf/eval.yaml``: ``python -m leuk.eval``."""

    ckpt_path: str = field(default=MISSING, metadata={"example": "<run>/checkpoints/<name>.ckpt"})
    # null: the run's own split.csv; a data config evaluates every image under its root.
    data: dict[str, Any] | None = field(default=None, metadata={**TARGET, "supplied": DATA_SUPPLIED})
    paths: dict[str, Any] = field(default_factory=dict)
    hydra: dict[str, Any] = field(default_factory=dict)
    task_name: str = "eval"
    split: SplitPart = SplitPart.test
    seed: int = 42
    batch_size: int = field(default=32, metadata={"min": 1})
    device: str = "auto"
    noise_sigmas: list[float] = field(default_factory=lambda: [0, 2, 5, 8, 10], metadata={"sigmas": True})
    shifts: list[str] = field(default_factory=list)
    shift_strengths: dict[str, list[float]] = field(default_factory=dict)
    calibration: CalibrationConfig = field(default_factory=lambda: CalibrationConfig())
    abstain_threshold: float = field(
        default=0.7, metadata={"min": 0.0, "max": 1.0, "what": "a softmax confidence"}
    )
    latency: bool = True
    latency_warmup: int = field(default=5, metadata={"min": 0})
    latency_iters: int = field(default=30, metadata={"min": 1})
    latency_batch_size: int = field(default=32, metadata={"min": 1})
    xgboost: bool = False
    xgboost_params: dict[str, Any] = field(default_factory=dict)
    gradcam: bool = False
    gradcam_per_class: int = field(default=4, metadata={"min": 0})
    misclassified_max: int = field(default=25, metadata={"min": 0})
    wandb: EvalWandbConfig = field(default_factory=EvalWandbConfig)
    print_config: bool = False


@dataclass
class PredictConfig:
    """``conf/predict.yaml``: ``python -m leuk.predict``."""

    ckpt_path: str = field(default=MISSING, metadata={"example": "<run>/checkpoints/<name>.ckpt"})
    input: str = field(default=MISSING, metadata={"example": "<image or folder>"})
    paths: dict[str, Any] = field(default_factory=dict)
    hydra: dict[str, Any] = field(default_factory=dict)
    task_name: str = "predict"
    abstain_threshold: float = field(
        default=0.7, metadata={"min": 0.0, "max": 1.0, "what": "a softmax confidence"}
    )
    batch_size: int = field(default=32, metadata={"min": 1})
    device: str = "auto"
    print_config: bool = False


SCHEMAS: dict[str, type] = {
    "train": TrainConfig,
    "eval": EvalConfig,
    "predict": PredictConfig,
    "bench": BenchConfig,
    "preview": PreviewConfig,
    "inspect": InspectConfig,
}


def register_configs() -> None:
    """Store the schemas in Hydra's ConfigStore as ``schema/<entry point>``; safe to call twice."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, schema in SCHEMAS.items():
        store.store(group="schema", name=name, node=schema)


def _check_model(model: Any, problems: list[str], lookup: ModelLookup | None) -> None:
    name = model.get("name") if isinstance(model, DictConfig) else None
    if not isinstance(name, str):
        return
    if lookup is None:
        lookup = locate(MODEL_REGISTRY)
    try:
        entry = lookup(name)
    except (LookupError, ValueError) as exc:  # the registry's UnknownModelError is a ValueError
        problems.append(f"model.name: {exc}")
        return
    arch = model.get("arch") or DictConfig({})
    target = f"{getattr(entry, '__module__', '')}.{getattr(entry, '__name__', name)}"
    check_call_arguments(entry, target, arch, "model.arch", problems, supplied=MODEL_SUPPLIED, partial=True)


def _check_training_ends(trainer: Any, problems: list[str]) -> None:
    """Lightning reads ``max_epochs=-1`` as "no epoch limit": without ``max_steps`` or ``max_time``
    (or ``fast_dev_run``) the run would train until killed, and never write metrics.json."""
    if not isinstance(trainer, DictConfig):
        return
    epochs = trainer.get("max_epochs")
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs >= 0:
        return
    if epochs < -1:
        problems.append(f"trainer.max_epochs: {epochs} is not a number of epochs (≥ 0)")
        return
    steps = trainer.get("max_steps")
    if trainer.get("fast_dev_run") or (isinstance(steps, int) and steps > 0) or trainer.get("max_time"):
        return
    problems.append(
        "trainer.max_epochs: -1 means no epoch limit, and nothing else ends the run; give a number of "
        "epochs, or bound it with trainer.max_steps=<steps> or trainer.max_time=<DD:HH:MM:SS>"
    )


def _check_input_size(cfg: DictConfig, problems: list[str]) -> None:
    """A data.image_size below what the model runs at stops here, not in a convolution mid-run."""
    try:
        size = OmegaConf.select(cfg, "data.image_size", throw_on_resolution_failure=True)
        minimum = OmegaConf.select(cfg, "model.min_image_size", throw_on_resolution_failure=True)
    except Exception:  # an unresolvable value is reported by the field checks
        return
    if isinstance(size, int) and isinstance(minimum, int) and size < minimum:
        problems.append(
            f"data.image_size: {size} px is smaller than model '{cfg.model.name}' accepts "
            f"(model.min_image_size={minimum}); set data.image_size={minimum} or more, or choose "
            "another model"
        )


def _problems(cfg: DictConfig, schema: type, model_lookup: ModelLookup | None = None) -> list[str]:
    problems: list[str] = []
    check_fields(cfg, "", schema, problems)
    if issubclass(schema, TrainConfig) and "model" in cfg:
        _check_model(cfg.model, problems, model_lookup)
        _check_input_size(cfg, problems)
    return problems


def _raise(problems: list[str]) -> None:
    if problems:
        raise ConfigError(problems)


def validate_train_config(cfg: DictConfig, *, model_lookup: ModelLookup | None = None) -> None:
    """Raise ``ConfigError`` listing every problem of a composed training config.

    ``model_lookup(name)`` returns the registered constructor for a model name (raising a
    ``ValueError`` for an unknown one); by default ``MODEL_REGISTRY``, located when the check runs.
    ``trainer.max_epochs=-1`` is refused unless ``max_steps`` or ``max_time`` ends the run.
    """
    problems = _problems(cfg, TrainConfig, model_lookup)
    _check_training_ends(cfg.get("trainer"), problems)
    _raise(problems)


def validate_bench_config(cfg: DictConfig, *, model_lookup: ModelLookup | None = None) -> None:
    """Raise ``ConfigError`` listing every problem of a composed ``conf/bench.yaml``."""
    _raise(_problems(cfg, BenchConfig, model_lookup))


def validate_preview_config(cfg: DictConfig, *, model_lookup: ModelLookup | None = None) -> None:
    """Raise ``ConfigError`` listing every problem of a composed ``conf/preview.yaml``."""
    _raise(_problems(cfg, PreviewConfig, model_lookup))


def validate_inspect_config(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` listing every problem of a composed ``conf/inspect.yaml``."""
    _raise(_problems(cfg, InspectConfig))


def validate_eval_config(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` listing every problem of an evaluation config, before anything runs."""
    problems = _problems(cfg, EvalConfig)
    data = cfg.get("data")
    if isinstance(data, DictConfig) and OmegaConf.is_missing(data, "root"):
        problems.append("data.root: required with a data config (the folder to evaluate)")
    _raise(problems)


def validate_predict_config(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` listing every problem of a prediction config, before anything runs."""
    _raise(_problems(cfg, PredictConfig))


__all__ = [
    "DATA_SUPPLIED",
    "MODEL_REGISTRY",
    "MODEL_SUPPLIED",
    "SCHEMAS",
    "AugmentationConfig",
    "BenchConfig",
    "BenchSettings",
    "ConfigError",
    "EvalConfig",
    "EvalWandbConfig",
    "InspectConfig",
    "ModelConfig",
    "PredictConfig",
    "PreprocessConfig",
    "PreviewConfig",
    "PreviewSettings",
    "SchedulerConfig",
    "TrainConfig",
    "locate",
    "register_configs",
    "validate_bench_config",
    "validate_eval_config",
    "validate_inspect_config",
    "validate_predict_config",
    "validate_preview_config",
    "validate_train_config",
]
