"""Fail at start, with the key's name, on a config typo or a value of the wrong type.

Hydra already refuses a command-line override of a key that does not exist, but a misspelt key in
a YAML file (an experiment config, a user's own config) would silently be ignored or reach a
constructor deep inside training. Every node with a ``_target_`` is checked here against the
signature of what it instantiates, and every plain node against the fields and type hints of its
dataclass in ``leuk.config.schema``: unknown keys, missing required arguments and values whose type
cannot match the annotation are all reported together, each with its full key.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import os
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import Enum
from pathlib import Path, PurePath
from typing import Any

from omegaconf import MISSING as OMEGACONF_MISSING
from omegaconf import DictConfig, ListConfig, OmegaConf

from leuk.utils.errors import UserConfigError


class ConfigError(UserConfigError, ValueError):
    """A config that cannot run, with every problem listed by its full key."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid config:\n" + "\n".join(f"  - {p}" for p in self.problems))


_MISSING = object()


def locate(target: str) -> Any:
    """The object a dotted path names (``module.attr`` or ``module.Class.attr``)."""
    module_name, _, attr = target.rpartition(".")
    if not module_name:
        raise ImportError(f"'{target}' is not a dotted path")
    try:
        obj: Any = importlib.import_module(module_name)
        return getattr(obj, attr)
    except (ImportError, AttributeError):
        # A nested attribute (module.Class.method) or a module given by a parent package.
        parts = target.split(".")
        for i in range(len(parts) - 1, 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            for part in parts[i:]:
                obj = getattr(obj, part)
            return obj
        raise


def _signature(obj: Any) -> tuple[inspect.Signature, dict[str, Any]] | None:
    fn = obj.__init__ if inspect.isclass(obj) else obj
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: check names, not types
        hints = {}
    return sig, hints


def _is_instance(value: Any, annotation: Any) -> bool:
    """A lenient check: False only where the value clearly cannot be of the annotated type."""
    if annotation in (Any, inspect.Parameter.empty, object) or isinstance(annotation, (str, typing.TypeVar)):
        return True
    if isinstance(value, (DictConfig, Mapping)) and "_target_" in value:
        return True  # instantiated into whatever the target builds
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        return any(_is_instance(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if inspect.isclass(annotation) and issubclass(annotation, Enum):
        return any(value == m.value or value == m.name for m in annotation)
    if annotation is type(None):
        return value is None
    if value is None:
        return False
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if annotation in (Path,) or annotation is Path:
        return isinstance(value, str)
    container = origin or annotation
    if container in (list, tuple, set, frozenset, Sequence, Iterable, typing.Sequence):
        return isinstance(value, (ListConfig, list, tuple))
    if container in (dict, Mapping, typing.Mapping):
        return isinstance(value, (DictConfig, dict))
    if container in (Callable,) or origin is Callable:
        return True
    if inspect.isclass(annotation) and isinstance(value, (str, int, float, bool)):
        # A plain value for a class-typed argument (a Tensor learning rate, say) must be an instance,
        # except paths, which configs give as strings.
        if isinstance(value, str) and issubclass(annotation, (os.PathLike, PurePath)):
            return True
        return isinstance(value, annotation)
    return True


def _node_value(node: DictConfig, key: str) -> Any:
    try:
        value = node[key]
    except Exception:  # an interpolation that only resolves inside a running Hydra job
        return _MISSING
    if isinstance(value, (DictConfig, ListConfig)):
        return value
    return value


def check_target_node(
    node: DictConfig,
    path: str,
    problems: list[str],
    *,
    supplied: Iterable[str] = (),
) -> None:
    """Check one ``_target_`` node's keys and value types against its target's signature."""
    target = str(node.get("_target_"))
    try:
        obj = locate(target)
    except Exception as exc:  # any import failure is a config problem here
        problems.append(f"{path}._target_: cannot import '{target}' ({type(exc).__name__}: {exc})")
        return
    check_call_arguments(
        obj, target, node, path, problems, supplied=supplied, partial=bool(node.get("_partial_", False))
    )


def check_call_arguments(
    obj: Any,
    target: str,
    node: DictConfig,
    path: str,
    problems: list[str],
    *,
    supplied: Iterable[str] = (),
    partial: bool = False,
) -> None:
    """Check ``node``'s keys as keyword arguments of ``obj`` (a class or a function)."""
    found = _signature(obj)
    if found is None:
        return
    sig, hints = found
    supplied = set(supplied)
    params = {n: p for n, p in sig.parameters.items() if n != "self"}
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    settable = sorted(named - supplied)
    for key in node:
        key = str(key)
        if key.startswith("_") and key.endswith("_"):
            continue
        full = f"{path}.{key}"
        if key not in named or key in supplied:
            if key in supplied:
                problems.append(f"{full}: set by leuk itself for {target}; remove it from the config")
            elif not takes_kwargs:
                hint = difflib.get_close_matches(key, settable, n=1)
                did_you_mean = f" Did you mean '{hint[0]}'?" if hint else ""
                problems.append(
                    f"{full}: unknown key for {target}.{did_you_mean} Valid keys: {', '.join(settable)}"
                )
            continue
        value = _node_value(node, key)
        if value is _MISSING:
            continue
        annotation = hints.get(key, params[key].annotation)
        if not _is_instance(value, annotation):
            shown = OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value
            problems.append(
                f"{full}: {shown!r} ({type(value).__name__}) does not fit the expected type "
                f"{_type_name(annotation)} of {target}"
            )
        check_nested(value, full, problems)
    if not partial:
        for name, p in params.items():
            if (
                p.default is inspect.Parameter.empty
                and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
                and name not in node
                and name not in supplied
            ):
                problems.append(f"{path}.{name}: required by {target} but missing")


def check_nested(value: Any, path: str, problems: list[str]) -> None:
    """Recurse into nested ``_target_`` nodes (dicts and lists of them)."""
    if isinstance(value, DictConfig):
        if "_target_" in value:
            check_target_node(value, path, problems)
        else:
            for k in value:
                check_nested(_node_value(value, str(k)), f"{path}.{k}", problems)
    elif isinstance(value, ListConfig):
        for i, item in enumerate(value):
            check_nested(item, f"{path}[{i}]", problems)


def _did_you_mean(key: str, valid: Iterable[str]) -> str:
    hint = difflib.get_close_matches(key, sorted(valid), n=1)
    return f" Did you mean '{hint[0]}'?" if hint else ""


def _is_required(f: dataclasses.Field) -> bool:
    return f.default is OMEGACONF_MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]


def check_fields(node: Any, path: str, schema: type, problems: list[str]) -> None:
    """Check a plain (non-instantiated) node against the fields and type hints of a dataclass.

    Every key the node holds must be a field (else "unknown key", with a "did you mean"); a value
    must fit its field's type; a nested dataclass field is checked in turn. A field's ``metadata``
    says what more to check (``leuk.config.schema`` lists the keys). A required field (no default)
    that is absent or still ``???`` is reported with its ``example``.
    """
    if not isinstance(node, DictConfig):
        problems.append(f"{(path or 'config')}: expected a mapping, got {type(node).__name__}")
        return
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    for name, f in fields.items():
        if _is_required(f) and (name not in node or OmegaConf.is_missing(node, name)):
            full = f"{path}.{name}" if path else name
            example = f.metadata.get("example", "...")
            problems.append(f"{full}: required ({full}={example})")
    checked: list[tuple[str, Any, dataclasses.Field]] = []
    for key in node:
        key = str(key)
        full = f"{path}.{key}" if path else key
        if key not in fields:
            problems.append(
                f"{full}: unknown key.{_did_you_mean(key, fields)} Valid keys: {', '.join(sorted(fields))}"
            )
            continue
        value = _node_value(node, key)
        if value is _MISSING:
            continue
        f, hint = fields[key], hints[key]
        meta = f.metadata
        if dataclasses.is_dataclass(hint):
            check_fields(value, full, hint, problems)
        elif meta.get("target"):
            _check_target_field(value, full, problems, supplied=meta.get("supplied", ()))
        elif meta.get("targets"):
            _check_named_targets(value, full, problems)
        elif meta.get("steps"):
            _check_steps(value, full, problems)
        elif not _is_instance(value, hint):
            problems.append(f"{full}: {value!r} does not fit the expected type {_type_name(hint)}")
        else:
            if meta.get("nested"):
                check_nested(value, full, problems)
            checked.append((full, value, f))
    # Ranges after keys and types, and noise strengths last of all, as the entry points always did.
    for full, value, f in sorted(checked, key=lambda c: bool(c[2].metadata.get("sigmas"))):
        _check_value(value, full, f.metadata, problems)


def _check_value(value: Any, full: str, meta: Mapping[str, Any], problems: list[str]) -> None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    low, high = meta.get("min"), meta.get("max")
    if number and high is not None and not low <= value <= high:
        problems.append(f"{full}: {meta.get('what', 'a value')} in [{low:g}, {high:g}], got {value}")
    elif number and low is not None and value < low:
        problems.append(f"{full}: must be at least {low}, got {value}")
    length = meta.get("length")
    if length is not None and isinstance(value, ListConfig) and len(value) != length:
        why = f" ({meta['what']})" if "what" in meta else ""
        problems.append(f"{full}: needs {length} values{why}, got {len(value)}")
    if meta.get("sigmas"):
        try:
            check_sigmas(value, key=full)
        except ValueError as err:
            problems.append(str(err))


def _check_target_field(value: Any, path: str, problems: list[str], *, supplied: Iterable[str] = ()) -> None:
    if value is None:
        return  # the field's type says whether null is allowed; every such field here allows it
    if not (isinstance(value, DictConfig) and "_target_" in value):
        problems.append(f"{path}: expected a node with a _target_")
        return
    check_target_node(value, path, problems, supplied=supplied)


def _check_named_targets(node: Any, path: str, problems: list[str]) -> None:
    """A mapping of named ``_target_`` nodes (loggers, callbacks); null switches one off."""
    if node is None:
        return
    if not isinstance(node, DictConfig):
        problems.append(f"{path}: expected a mapping of named entries")
        return
    for name in node:
        entry = _node_value(node, str(name))
        if entry is None or entry is _MISSING:
            continue
        if not isinstance(entry, DictConfig) or "_target_" not in entry:
            problems.append(f"{path}.{name}: expected a node with a _target_ (or null)")
            continue
        check_target_node(entry, f"{path}.{name}", problems)


def _check_steps(steps: Any, path: str, problems: list[str]) -> None:
    """Preprocessing steps: an ordered mapping {name: step node or null}, or a list (old configs)."""
    if steps is None:
        return
    if isinstance(steps, DictConfig):
        _check_named_targets(steps, path, problems)
        return
    if not isinstance(steps, ListConfig):
        problems.append(f"{path}: expected a mapping of named steps, got {type(steps).__name__}")
        return
    # check_nested checks each step's _target_ node; a step without one would never be built.
    for i, step in enumerate(steps):
        if not (isinstance(step, DictConfig) and "_target_" in step):
            problems.append(f"{path}[{i}]: expected a node with a _target_")
    check_nested(steps, path, problems)


def _type_name(annotation: Any) -> str:
    if inspect.isclass(annotation) and issubclass(annotation, Enum):
        return "one of " + ", ".join(str(m.value) for m in annotation)
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def check_sigmas(sigmas: Any, key: str = "noise_sigmas") -> list[float]:
    """Noise strengths (0–255 scale) as floats, or a ValueError naming the setting."""
    values = list(sigmas or [])
    if not all(isinstance(s, (int, float)) and not isinstance(s, bool) and s >= 0 for s in values):
        raise ValueError(f"{key}: non-negative numbers (0–255 scale), got {values}")
    return [float(s) for s in values]
