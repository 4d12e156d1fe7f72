"""Run records to commit: what a results table needs of each run, without checkpoints, images or
absolute paths.

Each run folder below ``source`` (as ``collect_runs`` finds them) is copied to the same relative
place below ``dest``: ``metrics.json`` / ``failed.json``, ``eval*.json``, ``.hydra/*.yaml`` and
``split.csv`` with its image paths made relative to the data root, so the committed split still
names every image and leaks nothing of the machine it ran on. Paths inside the JSON records that
point into the run folder become relative to it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from leuk.reporting.runs import FAILED_FILE, HYDRA_DIR, METRICS_FILE, collect_runs
from leuk.utils.errors import UserError

SPLIT_FILE = "split.csv"
HYDRA_FILES = ("config.yaml", "overrides.yaml", "hydra.yaml")


class ExportError(UserError, ValueError):
    """A run that cannot be exported as asked (an image outside the data root)."""


def _relative_values(value: Any, run_dir: str) -> Any:
    if isinstance(value, dict):
        return {k: _relative_values(v, run_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative_values(v, run_dir) for v in value]
    if isinstance(value, str) and (value == run_dir or value.startswith(run_dir + "/")):
        return value[len(run_dir) + 1 :] or "."
    if isinstance(value, str) and run_dir + "/" in value:
        # A description naming a file of the run ("test split of <run>/split.csv").
        return value.replace(run_dir + "/", "")
    return value


def _copy_json(src: Path, dst: Path, run_dir: Path) -> None:
    record = json.loads(src.read_text())
    dst.write_text(json.dumps(_relative_values(record, str(run_dir)), indent=2) + "\n")


def _relative_split(src: Path, dst: Path, data_root: Path) -> None:
    frame = pd.read_csv(src)
    root = data_root.resolve()
    relative = []
    for path in frame["path"]:
        p = Path(path)
        if not p.is_absolute():
            relative.append(str(p))
            continue
        try:
            relative.append(str(p.resolve().relative_to(root)))
        except ValueError:
            raise ExportError(
                f"{src}: image {path} is not below the data root {root}; give the root the run read "
                "(--data-root)"
            ) from None
    frame["path"] = relative
    frame.to_csv(dst, index=False)


def export_runs(source: str | Path, dest: str | Path, data_root: str | Path) -> list[Path]:
    """Copy the record of every run below ``source`` to ``dest``; return the exported run folders."""
    source, dest = Path(source).resolve(), Path(dest)
    exported = []
    for run in collect_runs([source]):
        run_dir = run.path.resolve()
        target = dest / run_dir.relative_to(source)
        target.mkdir(parents=True, exist_ok=True)
        for name in (METRICS_FILE, FAILED_FILE, *sorted(p.name for p in run_dir.glob("eval*.json"))):
            if (run_dir / name).is_file():
                _copy_json(run_dir / name, target / name, run_dir)
        if (run_dir / SPLIT_FILE).is_file():
            _relative_split(run_dir / SPLIT_FILE, target / SPLIT_FILE, Path(data_root))
        for name in HYDRA_FILES:
            if (run_dir / HYDRA_DIR / name).is_file():
                (target / HYDRA_DIR).mkdir(exist_ok=True)
                shutil.copyfile(run_dir / HYDRA_DIR / name, target / HYDRA_DIR / name)
        exported.append(target)
    return exported
