"""``leuk.eval`` records of the report's runs: calibration, shift robustness and external test sets.

``leuk.eval`` writes ``eval.json`` into its own folder; a run's evaluation joins the report when
its ``eval*.json`` lies beside the run's ``metrics.json`` (``leuk.report --export`` keeps them).
The evaluation of the run's own test split gives the calibration and shift columns; one of another
folder (``external``: true) is an external test set and is reported apart, labelled so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

EVAL_GLOB = "eval*.json"
# The values of an evaluation the report aggregates, as flat keys of ``Run.evaluation``.
CALIBRATION_KEYS = ("ece", "ece_scaled", "temperature")
ABSTENTION_KEYS = ("coverage", "accuracy_covered")


def read_evaluations(run_dir: Path) -> list[dict[str, Any]]:
    """Every readable ``eval*.json`` beside a run's metrics.json (an unreadable one is skipped with
    its name recorded, so the report can say so)."""
    found = []
    for path in sorted(run_dir.glob(EVAL_GLOB)):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            found.append({"file": path.name, "unreadable": str(err)})
            continue
        if isinstance(record, dict):
            found.append({"file": path.name, **record})
    return found


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) else float(value)


def _prefixed(metrics: Mapping[str, Any], name: str) -> float | None:
    """``<split>/<name>`` whatever split the evaluation ran on."""
    for key, value in metrics.items():
        if key.count("/") == 1 and key.split("/", 1)[1] == name:
            return _number(value)
    return None


def _shift_key(name: str, strength: float, what: str) -> str:
    return f"shift/{name}/{strength:g}/{what}"


def flatten_evaluation(record: Mapping[str, Any]) -> dict[str, float]:
    """The aggregated values of one evaluation: ``accuracy``/``mcc`` on the evaluated images,
    ``ece``, ``ece_scaled``, ``temperature``, the abstention at the run's threshold before and after
    scaling (``coverage``, ``accuracy_covered``, ``*_scaled``), and per shift and strength
    ``shift/<name>/<strength>/accuracy`` and ``.../wrong_confident`` (the share of the wrong
    predictions whose top probability is at least the abstention threshold)."""
    out: dict[str, float] = {}
    metrics = record.get("metrics") or {}
    for name in ("accuracy", "mcc", "f1"):
        value = _prefixed(metrics, name)
        if value is not None:
            out[name] = value
    calibration = record.get("calibration") or {}
    for key in CALIBRATION_KEYS:
        value = _number(calibration.get(key))
        if value is not None:
            out[key] = value
    for source, suffix in (
        (record.get("abstention") or {}, ""),
        (calibration.get("abstention_scaled") or {}, "_scaled"),
    ):
        for key in ABSTENTION_KEYS:
            value = _number(source.get(key))
            if value is not None:
                out[key + suffix] = value
    for row in record.get("shift") or []:
        name, strength = row.get("shift"), _number(row.get("strength"))
        if name is None or strength is None:
            continue
        accuracy = _prefixed(row, "accuracy")
        if accuracy is not None:
            out[_shift_key(name, strength, "accuracy")] = accuracy
        wrong, sure = _number(row.get("n_wrong")), _number(row.get("n_wrong_confident"))
        if wrong is not None and sure is not None:
            out[_shift_key(name, strength, "wrong_confident")] = sure / wrong if wrong else 0.0
    return out


def own_split_evaluation(evaluations: list[dict[str, Any]]) -> dict[str, float]:
    """The flat values of the run's evaluation on its own test split (the newest file if several)."""
    own = [e for e in evaluations if "unreadable" not in e and not e.get("external")]
    return flatten_evaluation(own[-1]) if own else {}


def external_evaluations(evaluations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in evaluations if "unreadable" not in e and e.get("external")]


def shifts_of(values: Iterator[Mapping[str, float]] | list[Mapping[str, float]]) -> dict[str, list[float]]:
    """Shift name -> its strengths, in the order the evaluations recorded them."""
    found: dict[str, list[float]] = {}
    for flat in values:
        for key in flat:
            if key.startswith("shift/") and key.endswith("/accuracy"):
                _, name, strength, _ = key.split("/")
                strengths = found.setdefault(name, [])
                if float(strength) not in strengths:
                    strengths.append(float(strength))
    return found
