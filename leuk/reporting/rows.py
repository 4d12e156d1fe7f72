"""Aggregation: runs that differ only in seed or fold become one row (mean ± sample std of each
metric), matched with the papers' values; validation marks the best setting of a grid."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from leuk.reference import Reference
from leuk.reporting.runs import Run, budget_keys, experiment_value

METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "mcc", "auroc")
# The metrics of the noise-robustness tables.
NOISE_METRICS = ("accuracy", "f1")
# The validation key the best setting is chosen on, unless --select says another.
DEFAULT_SELECT = "val/mcc"
BEST_MARK = "◀ best"


@dataclass
class Stat:
    """Mean and sample standard deviation (ddof=1; undefined for fewer than two values)."""

    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else math.nan

    def format(self, digits: int = 3) -> str:
        if not self.values:
            return "n/a"
        if len(self.values) == 1:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


def stat_of(runs: Sequence[Run], key: str) -> Stat:
    values = [run.metrics.get(key) for run in runs]
    return Stat([float(v) for v in values if isinstance(v, (int, float)) and not math.isnan(v)])


@dataclass
class Row:
    key: tuple[str, str, str, str, int, tuple[str, ...]]
    runs: list[Run]
    failed: list[Run]
    # Killed or still running (``Run.unfinished``).
    unfinished: list[Run] = field(default_factory=list)
    references: list[Reference] = field(default_factory=list)
    # Whether validation (``select``) picks this row among the settings of its model and protocol
    # (``BEST_MARK``, with "(tie)" when other rows share the best value), else "".
    best_mark: str = ""

    @property
    def budget(self) -> str | None:
        """The budget every run of the row ran under (``budget=cpu``), else None."""
        members = self.runs or self.failed or self.unfinished
        budgets = {run.budget for run in members}
        return budgets.pop() if len(budgets) == 1 else None

    @property
    def scaled_keys(self) -> frozenset[str]:
        """The keys the row's budget set: the paper's value is compared although they differ."""
        return budget_keys(self.budget) if self.budget else frozenset()

    @property
    def unscaled(self) -> dict[str, Any]:
        """Each scaled key with the value of the row's experiment without the budget (None: unknown)."""
        return {
            key: experiment_value(self.experiment, key) if self.experiment else None
            for key in self.scaled_keys
        }

    def evaluation(self, key: str) -> Stat:
        """A value of the runs' own-split ``leuk.eval`` records (``Run.evaluation``)."""
        values = [run.evaluation.get(key) for run in self.runs]
        return Stat([float(v) for v in values if v is not None])

    @property
    def evaluated(self) -> int:
        return sum(1 for run in self.runs if run.evaluation)

    @property
    def best_by_val(self) -> bool:
        return bool(self.best_mark)

    @property
    def experiment(self) -> str:
        return self.key[0]

    @property
    def data(self) -> str:
        return self.key[1]

    @property
    def split(self) -> str:
        return self.key[2]

    @property
    def model(self) -> str:
        return self.key[3]

    @property
    def image_size(self) -> int:
        return self.key[4]

    def setting(self, common: frozenset[str] = frozenset()) -> str:
        return " ".join(o for o in self.key[5] if o not in common)

    def stat(self, metric: str) -> Stat:
        if metric in METRICS:
            return stat_of(self.runs, f"test/{metric}")
        return stat_of(self.runs, metric)

    def val(self, metric: str) -> Stat:
        """``metric`` on the validation split (``val/<metric>``) of the row's selected checkpoints."""
        return stat_of(self.runs, f"val/{metric}")

    @property
    def seeds(self) -> list[Any]:
        return sorted({r.lookup("seed") for r in self.runs if r.lookup("seed") is not None}, key=str)

    def label(self, common: frozenset[str] = frozenset()) -> str:
        parts = [
            self.model,
            self.experiment,
            self.data,
            self.split,
            f"{self.image_size} px",
            self.setting(common),
        ]
        return ", ".join(p for p in parts if p)


def build_rows(runs: Sequence[Run], references: Sequence[Reference] = ()) -> list[Row]:
    groups: dict[tuple, Row] = {}
    for run in runs:
        row = groups.setdefault(run.key, Row(key=run.key, runs=[], failed=[]))
        (row.failed if run.failed else row.unfinished if run.unfinished else row.runs).append(run)
    rows = sorted(groups.values(), key=lambda r: (r.key[:4], r.key[4], r.key[5]))
    for row in rows:
        # Every run must match (a value of fold 0 is not the counterpart of a mean over folds).
        members = row.runs or row.failed or row.unfinished
        scaled = row.unscaled
        row.references = [
            ref
            for ref in references
            if all(ref.applies(row.model, row.data, r.lookup, scaled) for r in members)
        ]
    return rows


def check_select(select: str) -> str:
    if not select.startswith("val/"):
        raise ValueError(
            f"--select {select}: choose on a validation key (val/mcc, val/loss, ...); choosing on test/* "
            "would select on the test split"
        )
    return select


def mark_best_by_validation(rows: Sequence[Row], select: str = DEFAULT_SELECT) -> None:
    """Mark, among rows of one experiment, data, split and model, the one validation prefers."""
    check_select(select)
    lower_is_better = select.rsplit("/", 1)[-1].endswith("loss")
    groups: dict[tuple, list[Row]] = {}
    for row in rows:
        row.best_mark = ""
        groups.setdefault(row.key[:4], []).append(row)
    for members in groups.values():
        scored = [(row.val(select.removeprefix("val/")).mean, row) for row in members]
        scored = [(v, row) for v, row in scored if not math.isnan(v)]
        if len(members) < 2 or not scored:
            continue
        best = (min if lower_is_better else max)(v for v, _ in scored)
        winners = [row for v, row in scored if math.isclose(v, best, rel_tol=1e-9, abs_tol=1e-12)]
        for row in winners:
            row.best_mark = BEST_MARK if len(winners) == 1 else f"{BEST_MARK} (tie)"


def common_overrides(rows: Sequence[Row]) -> frozenset[str]:
    """Overrides every row shares: said once in the header instead of in every row."""
    if not rows:
        return frozenset()
    sets = [set(row.key[5]) for row in rows]
    return frozenset(set.intersection(*sets))


def noise_sigmas(rows: Sequence[Row]) -> list[float]:
    """The σ values of every ``noise/<σ>/<metric>`` key the rows' runs recorded (``noise_sigmas``)."""
    keys = {k for row in rows for run in row.runs for k in run.metrics if k.startswith("noise/")}
    return sorted({float(k.split("/")[1]) for k in keys})
