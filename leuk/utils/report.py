"""Console output and the run's files (metrics.json, split.csv)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from rich.tree import Tree


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_json(path: str | Path, data: Mapping[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n")
    return path


def print_metric_table(
    metrics: Mapping[str, Any], prefix: str = "test/", title: str = "test metrics"
) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        if key.startswith(prefix) and isinstance(value, (int, float)):
            table.add_row(key[len(prefix) :], f"{value:.4f}")
    Console().print(table)


def print_config_tree(cfg: DictConfig) -> None:
    tree = Tree("config")
    for key in cfg:
        node = cfg[key]
        text = OmegaConf.to_yaml(node, resolve=False) if isinstance(node, DictConfig) else str(node)
        tree.add(f"[bold]{key}[/bold]").add(text)
    Console().print(tree)


def noise_key(sigma: float, metric: str) -> str:
    """The flat metrics.json key of one noise-robustness value, e.g. ``noise/2/accuracy`` (σ = 2)."""
    return f"noise/{sigma:g}/{metric}"
