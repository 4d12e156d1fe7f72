"""The values the papers report, for ``leuk.report``'s comparison (``paper_results.csv``).

Columns: ``paper``, ``table`` (where in the paper), ``model`` (leuk's architecture name, as in
``metrics.json``; empty: any), ``dataset`` (leuk's data option, e.g. ``all``, ``cnmc``; empty: any),
``protocol`` (space-separated ``key=value`` conditions on a run, all of which must hold: a config
group's choice such as ``experiment=aldl_paper`` or ``data/split=train_test_70_30``, or a config
value such as ``data.image_size=256``), ``metric`` (a report column: ``accuracy``, ``f1``, ...,
``wall_time_s``, ``preprocess_s_per_image``), ``value`` (empty where not filled in yet), ``note``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

COLUMNS = ("paper", "table", "model", "dataset", "protocol", "metric", "value", "note")
PACKAGED = "paper_results.csv"


class ReferenceFileError(ValueError):
    """A reference file that does not follow the schema above."""


@dataclass(frozen=True)
class Reference:
    paper: str
    table: str
    model: str
    dataset: str
    protocol: str
    metric: str
    value: float
    note: str

    @property
    def known(self) -> bool:
        return not math.isnan(self.value)

    @property
    def source(self) -> str:
        return f"{self.paper}, {self.table}" if self.table else self.paper

    def conditions(self) -> list[tuple[str, str]]:
        out = []
        for term in self.protocol.split():
            key, sep, value = term.partition("=")
            if not sep or not key:
                raise ReferenceFileError(f"protocol term '{term}' of {self.paper}: expected key=value")
            out.append((key, value))
        return out

    def applies(self, model: str, dataset: str, lookup: Callable[[str], object]) -> bool:
        """Whether this value is the paper's counterpart of a run: same model, data set and protocol."""
        if self.model and self.model != model:
            return False
        if self.dataset and self.dataset != dataset:
            return False
        return all(same_value(lookup(key), value) for key, value in self.conditions())


def same_value(actual: object, expected: str) -> bool:
    """Config values compare as text, numbers as numbers (``1e-5`` equals ``1.0e-05``)."""
    if actual is None:
        return False
    if str(actual) == expected:
        return True
    try:
        return math.isclose(float(str(actual)), float(expected), rel_tol=1e-9)
    except ValueError:
        return False


def _parse_value(text: str, where: str) -> float:
    text = text.strip()
    if text == "" or text.lower() in {"nan", "n/a"}:
        return math.nan
    try:
        return float(text)
    except ValueError as err:
        raise ReferenceFileError(
            f"{where}: value '{text}' is not a number (leave it empty if unknown)"
        ) from err


def read_references(text: str, origin: str) -> list[Reference]:
    reader = csv.DictReader(io.StringIO(text))
    refs = []
    for row in reader:
        where = f"{origin}, line {reader.line_num}"
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise ReferenceFileError(f"{where}: missing columns {missing}; expected {list(COLUMNS)}")
        fields = {c: (row[c] or "").strip() for c in COLUMNS if c != "value"}
        ref = Reference(**fields, value=_parse_value(row["value"] or "", where))
        ref.conditions()
        refs.append(ref)
    return refs


def load_references(path: str | Path | None = None) -> list[Reference]:
    """The packaged ``paper_results.csv``, or another file of the same columns."""
    if path is None:
        text = resources.files(__name__).joinpath(PACKAGED).read_text(encoding="utf-8")
        origin = PACKAGED
    else:
        text = Path(path).read_text(encoding="utf-8")
        origin = str(path)
    return read_references(text, origin)
