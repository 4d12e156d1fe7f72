"""Loading run folders: each ``metrics.json`` is one completed run, each ``failed.json`` (written
by ``leuk.utils.task.task_wrapper``) one failed run, and each training run's ``.hydra/`` with
neither beside it one unfinished run (killed, or still running); with the run's Hydra config, group
choices and overrides beside it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from leuk.config.paths import config_dir
from leuk.reporting.evaluations import own_split_evaluation, read_evaluations
from leuk.utils.run_folder import LOCK_FILE
from leuk.utils.task import FAILED_FILE

METRICS_FILE = "metrics.json"
HYDRA_DIR = ".hydra"
# The primary config a training run is composed from (``hydra.job.config_name`` in .hydra/hydra.yaml;
# task_name differs from experiment to experiment, the config name does not).
TRAIN_CONFIG = "train"
# The entry points whose failures are runs of the table (a failed leuk.eval leaves failed.json too):
# the training task as recorded before and after the entry points moved to leuk.cli.
TRAIN_TASKS = frozenset({"leuk.train.train", "leuk.cli.train.train"})
# Overrides that repeat a protocol rather than change it: their runs are averaged in one row.
# data.fold and data.fold_index are the keys of runs written before issue 16.
REPEAT_KEYS = frozenset({"seed", "data.fold", "data.fold_index", "data.split.fold_index"})
# Overrides already shown in a column of their own.
SHOWN_KEYS = frozenset(
    {"experiment", "model", "model.name", "data", "data/split", "data.image_size", "sweep"}
)
_FOLD = re.compile(r",? fold \d+")


@dataclass
class Run:
    path: Path
    failed: bool
    # Started (Hydra wrote .hydra/) but wrote neither metrics.json nor failed.json.
    unfinished: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)
    failure: dict[str, Any] = field(default_factory=dict)
    config: DictConfig | None = None
    choices: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    # The run's leuk.eval records (eval*.json beside metrics.json), and the flat values of the one
    # on its own test split (``leuk.reporting.evaluations.flatten_evaluation``).
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    evaluation: dict[str, float] = field(default_factory=dict)

    def lookup(self, key: str) -> Any:
        """A config group's choice, a config value, or what metrics.json / failed.json recorded."""
        if self.choices.get(key) is not None:
            return self.choices[key]
        if self.config is not None:
            value = OmegaConf.select(self.config, key, throw_on_resolution_failure=False)
            if value is not None:
                return value
        recorded = {"model.name": "model", "data.image_size": "image_size", "seed": "seed"}
        if key in recorded:
            return self.metrics.get(recorded[key], self.failure.get(recorded[key]))
        return None

    @property
    def model(self) -> str:
        return str(self.lookup("model.name") or "?")

    @property
    def budget(self) -> str | None:
        """The ``budget`` group's choice (``cpu``), or None for a paper's full protocol."""
        choice = self.choices.get("budget")
        return str(choice) if choice else None

    @property
    def data(self) -> str:
        if self.choices.get("data"):
            return str(self.choices["data"])
        text = re.sub(r"\s*\(.*\)$", "", str(self.metrics.get("data") or "?"))
        return "/".join(Path(text).parts[-2:]) if "/" in text else text

    @property
    def split(self) -> str:
        text = self.metrics.get("split")
        if not text and self.config is not None and "split" in self.config.get("data", {}):
            text = _describe_split(self.config.data.split)
        if not text:
            text = self.choices.get("data/split") or "?"
        return _FOLD.sub("", str(text))

    @property
    def setting(self) -> tuple[str, ...]:
        kept = []
        for override in self.overrides:
            key = override.split("=", 1)[0].lstrip("+~")
            if key not in REPEAT_KEYS and key not in SHOWN_KEYS:
                kept.append(canonical_override(override))
        return tuple(sorted(kept))

    @property
    def key(self) -> tuple[str, str, str, str, int, tuple[str, ...]]:
        size = self.lookup("data.image_size")
        return (
            str(self.choices.get("experiment") or ""),
            self.data,
            self.split,
            self.model,
            int(size) if isinstance(size, (int, float)) else -1,
            self.setting,
        )


# Hydra reads true/false/null in any case; a multirun job records them as Python prints them
# (``model.pretrained=False``), a single run as typed (``model.pretrained=false``).
_LITERALS = {"true": "true", "false": "false", "null": "null", "none": "null"}


def canonical_override(override: str) -> str:
    """``key=value`` with a boolean or null value in one spelling, so that a multirun job and a
    single run with the same settings are one row."""
    key, sep, value = override.partition("=")
    return f"{key}{sep}{_LITERALS.get(value.lower(), value)}" if sep else override


def _leaf_keys(node: Any, prefix: str = "") -> set[str]:
    if not isinstance(node, dict):
        return {prefix} if prefix else set()
    keys: set[str] = set()
    for key, value in node.items():
        keys |= _leaf_keys(value, f"{prefix}.{key}" if prefix else str(key))
    return keys


@cache
def budget_keys(name: str) -> frozenset[str]:
    """The config keys ``budget=<name>`` sets (``data.image_size``, ``trainer.max_epochs``), read
    from ``conf/budget/<name>.yaml``; none for a budget leuk does not ship."""
    path = config_dir() / "budget" / f"{name}.yaml"
    if not path.is_file():
        return frozenset()
    return frozenset(_leaf_keys(OmegaConf.to_container(OmegaConf.load(path))))


def _select(node: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


@cache
def experiment_value(experiment: str, key: str) -> Any:
    """The value ``conf/experiment/<experiment>.yaml`` gives ``key`` (through the experiments it
    builds on, as ``aldl_paper_adam`` on ``aldl_paper``), None where it gives none: the protocol a
    budget scaled down, for the comparison with the paper's."""
    seen: set[str] = set()
    pending = [experiment]
    while pending:
        name = pending.pop(0)
        path = config_dir() / "experiment" / f"{name}.yaml"
        if name in seen or not path.is_file():
            continue
        seen.add(name)
        node = OmegaConf.to_container(OmegaConf.load(path))
        value = _select(node, key)
        if value is not None:
            return value
        for entry in node.get("defaults", []) if isinstance(node, dict) else []:
            if isinstance(entry, str) and entry != "_self_" and not entry.startswith("/"):
                pending.append(entry)
    return None


def _describe_split(node: DictConfig) -> str | None:
    """The split's own description (as metrics.json has it), for a run that failed before writing it."""
    try:
        from hydra.utils import instantiate

        return instantiate(node).describe()
    except Exception:
        return None


def _read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _unfinished_note(run_dir: Path) -> str:
    note = f"no {METRICS_FILE} or {FAILED_FILE}: killed, or still running"
    try:
        lock = json.loads((run_dir / LOCK_FILE).read_text())
        return f"{note} ({LOCK_FILE}: pid {lock['pid']} on {lock['host']}, since {lock.get('time', '?')})"
    except (OSError, ValueError, KeyError, TypeError):
        return note


def load_run(run_dir: Path) -> Run:
    """The run in ``run_dir`` (a completed run if its metrics.json is newer than any failed.json;
    unfinished if it has neither)."""
    metrics_path, failed_path = run_dir / METRICS_FILE, run_dir / FAILED_FILE
    failed = failed_path.is_file() and (
        not metrics_path.is_file() or failed_path.stat().st_mtime > metrics_path.stat().st_mtime
    )
    run = Run(path=run_dir, failed=failed)
    if not failed and not metrics_path.exists():
        run.unfinished = True
        run.failure = {"status": "unfinished", "error": _unfinished_note(run_dir)}
    try:
        if failed:
            run.failure = _read_json(failed_path)
        elif not run.unfinished:
            run.metrics = _read_json(metrics_path)
            run.evaluations = read_evaluations(run_dir)
            run.evaluation = own_split_evaluation(run.evaluations)
    except (OSError, ValueError) as err:
        name = FAILED_FILE if failed else METRICS_FILE
        run.failed = True
        run.failure = {"status": "failed", "error": f"unreadable {name}: {err}"}
    hydra_dir = run_dir / HYDRA_DIR
    if (hydra_dir / "config.yaml").is_file():
        run.config = OmegaConf.load(hydra_dir / "config.yaml")
    if (hydra_dir / "hydra.yaml").is_file():
        choices = OmegaConf.select(OmegaConf.load(hydra_dir / "hydra.yaml"), "hydra.runtime.choices")
        run.choices = OmegaConf.to_container(choices) if choices is not None else {}
    if (hydra_dir / "overrides.yaml").is_file():
        run.overrides = [str(o) for o in OmegaConf.load(hydra_dir / "overrides.yaml")]
    elif run.failure.get("overrides"):
        run.overrides = [str(o) for o in run.failure["overrides"]]
    return run


def started_training(run_dir: Path) -> bool:
    """Whether Hydra started a training run in ``run_dir`` (its .hydra/hydra.yaml names conf/train.yaml)."""
    try:
        hydra = OmegaConf.load(run_dir / HYDRA_DIR / "hydra.yaml")
        return OmegaConf.select(hydra, "hydra.job.config_name") == TRAIN_CONFIG
    except Exception:  # unreadable or not a Hydra record: not a run of the table
        return False


def collect_runs(folders: Iterable[str | Path]) -> list[Run]:
    """Every run folder below ``folders`` (each counted once, however the folders overlap)."""
    seen: dict[Path, Run] = {}
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"no such folder: {folder}")
        for marker in (*folder.rglob(METRICS_FILE), *folder.rglob(FAILED_FILE)):
            run_dir = marker.parent.resolve()
            if run_dir not in seen:
                seen[run_dir] = load_run(run_dir)
        # A training run killed before it wrote either file left only what Hydra wrote at its start.
        for marker in folder.rglob(HYDRA_DIR):
            run_dir = marker.parent.resolve()
            if run_dir not in seen and marker.is_dir() and started_training(run_dir):
                seen[run_dir] = load_run(run_dir)
    runs = [run for run in seen.values() if run.failure.get("task") in (None, *TRAIN_TASKS)]
    return sorted(runs, key=lambda r: str(r.path))
