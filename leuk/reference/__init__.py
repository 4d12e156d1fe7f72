"""The values the papers report, for ``leuk.report``'s comparison (``paper_results.csv``).

One row per value a paper prints, with the columns:

- ``paper``: the paper's short name (``MCB-HyperNet``, ``MSEENet``, ``ALDL``, ``modified VGG16``,
  ``MobileNet_M``); ``table``: where it prints the value (``Table 2``, ``abstract``, ``Section 4.3``);
- ``model``: leuk's architecture name, as ``metrics.json`` has it (empty: any); ``dataset``: leuk's
  data option (``all``, ``cnmc``; empty: any); ``split``: the paper's split, in words;
- ``config``: the ``python -m leuk.train`` overrides that reproduce the row (``experiment=...`` and
  others, space-separated ``key=value``). They are also the row's conditions: a report row takes the
  value when every one of its runs has each ``key=value`` (a config group's choice such as
  ``data/split=train_test_70_30``, or a config value such as ``data.image_size=256``; a
  preprocessing step by its name, ``preprocess.steps.lesion.space=rgb``); ``model=``
  (the model column matches instead, by ``model.name``) and ``sweep=`` (how many jobs, not what a
  job is) are not conditions;
- ``metric``: leuk's key for the value in the paper's variant: a stage metric as it follows
  ``test/`` or ``val/`` in ``metrics.json`` (``accuracy``, ``weighted/precision``, ``auroc_hard``,
  ``precision/HEM (normal)``, ``pos/precision``), a noise-table key (``noise/8/accuracy``), or a
  run-level key (``wall_time_s``; a key leuk does not write shows as not measured);
- ``variant``: how the paper averages or computes it, one of ``VARIANTS``; it must be the variant
  of leuk's key (``implied_variant``), so the report compares like with like;
- ``basis``: ``stated`` (the paper names the variant), ``inferred`` (its numbers fix it, see the
  note) or ``assumed`` (the paper is silent and its numbers do not tell);
- ``value``: the number as the paper prints it (digits unchanged; a decimal comma written as a
  point, a thousands separator dropped), in ``unit``: ``percent``, ``fraction``, ``s`` or ``ms``;
  ``Reference.scaled`` is it on leuk's scale (a fraction, seconds or milliseconds);
- ``n``: how many runs the paper's value averages (1: one run, or the paper does not say: see the
  note); ``note``: anything else a reader needs (how a variant was inferred, what is not comparable).
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from leuk.utils.errors import UserError

COLUMNS = (
    "paper",
    "table",
    "model",
    "dataset",
    "split",
    "config",
    "metric",
    "variant",
    "basis",
    "value",
    "unit",
    "n",
    "note",
)
PACKAGED = "paper_results.csv"

VARIANTS = {
    "micro": "over all predictions at once (accuracy)",
    "macro": "unweighted mean over the classes of the one-vs-rest values",
    "weighted": "mean over the classes weighted by each class's support",
    "per-class": "one class against the others",
    "positive-class": "two classes: the positive class (C-NMC's ALL) against the other",
    "probability": "AUC from the predicted probabilities, macro one-vs-rest",
    "hard-label": "AUC from the one-hot argmax predictions (binary: (sensitivity + specificity) / 2)",
    "multiclass": "multiclass Matthews correlation coefficient (Gorodkin's R_K)",
    "time": "a duration, on the paper's hardware",
}
BASES = ("stated", "inferred", "assumed")
# Scale of each unit to leuk's (fractions, seconds, milliseconds) and its admissible range.
UNITS = {"percent": (0.01, 100.0), "fraction": (1.0, 1.0), "s": (1.0, math.inf), "ms": (1.0, math.inf)}
# Keys of the run as a whole (not per stage): compared as they are.
RUN_KEYS = frozenset({"wall_time_s", "train_images_per_s", "method_s_per_image", "latency_ms_median"})
# preprocess.steps.<i>...: the positional key of a step, from before the steps had names.
_STEP_BY_POSITION = re.compile(r"^preprocess\.steps\.\d+(\.|$)")
# Keys that are not conditions on a run (see the module doc).
NOT_CONDITIONS = frozenset({"model", "sweep"})
_SUMMARY_VARIANT = {
    "accuracy": "micro",
    "balanced_accuracy": "macro",
    "precision": "macro",
    "recall": "macro",
    "specificity": "macro",
    "f1": "macro",
    "mcc": "multiclass",
    "auroc": "probability",
    "auroc_hard": "hard-label",
}


class ReferenceFileError(UserError, ValueError):
    """A reference file that does not follow the schema above."""


def implied_variant(metric: str) -> str | None:
    """The variant of leuk's key ``metric`` (None: not a key whose variant leuk knows)."""
    if metric in RUN_KEYS:
        return "time"
    parts = metric.split("/")
    if parts[0] == "noise" and len(parts) == 3:
        return _SUMMARY_VARIANT.get(parts[2])
    if len(parts) == 1:
        return _SUMMARY_VARIANT.get(metric)
    if parts[0] == "weighted" and len(parts) == 2:
        return "weighted"
    if parts[0] == "pos" and len(parts) == 2:
        return "positive-class" if parts[1] != "auroc" else "probability"
    if len(parts) == 2 and parts[0] in _SUMMARY_VARIANT:
        return "per-class"
    return None


@dataclass(frozen=True)
class Reference:
    paper: str
    table: str
    model: str
    dataset: str
    split: str
    config: str
    metric: str
    variant: str
    basis: str
    value: float
    unit: str
    n: int
    note: str

    @property
    def known(self) -> bool:
        return not math.isnan(self.value)

    @property
    def scaled(self) -> float:
        """The value on leuk's scale (fractions for ratios)."""
        return self.value * UNITS[self.unit][0]

    @property
    def stage_metric(self) -> bool:
        """Whether ``metric`` follows ``test/`` and ``val/`` (else it is a noise or run-level key)."""
        return self.metric not in RUN_KEYS and not self.metric.startswith("noise/")

    @property
    def source(self) -> str:
        return f"{self.paper}, {self.table}" if self.table else self.paper

    def conditions(self) -> list[tuple[str, str]]:
        out = []
        for term in self.config.split():
            key, sep, value = term.partition("=")
            if not sep or not key:
                raise ReferenceFileError(f"config term '{term}' of {self.paper}: expected key=value")
            if _STEP_BY_POSITION.match(key.lstrip("+~")):
                # A position would silently retarget another step once a step is inserted.
                raise ReferenceFileError(
                    f"config term '{term}' of {self.paper}: name the preprocessing step "
                    "(preprocess.steps.lesion.space), not its position"
                )
            if key.lstrip("+~") not in NOT_CONDITIONS:
                out.append((key.lstrip("+~"), value))
        return out

    def applies(
        self,
        model: str,
        dataset: str,
        lookup: Callable[[str], object],
        scaled: Mapping[str, object] | None = None,
    ) -> bool:
        """Whether this value is the paper's counterpart of a run: same model, data set and protocol.

        ``scaled``: the keys a budget (``budget=cpu``) set for the run, each with the value its
        experiment gives without the budget (None: unknown, any value). The paper's protocol is still
        the counterpart where only these keys differ, and the report says so beside the value."""
        if self.model and self.model != model:
            return False
        if self.dataset and self.dataset != dataset:
            return False
        scaled = scaled or {}
        for key, value in self.conditions():
            if key in scaled:
                if scaled[key] is not None and not same_value(scaled[key], value):
                    return False
            elif not same_value(lookup(key), value):
                return False
        return True


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


def _parse_n(text: str, where: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ReferenceFileError(
            f"{where}: n '{text}' must be the number of runs the value averages (1 or more)"
        )
    return n


def _check(ref: Reference, where: str) -> None:
    if not ref.paper:
        raise ReferenceFileError(f"{where}: empty paper")
    if ref.variant not in VARIANTS:
        raise ReferenceFileError(f"{where}: variant '{ref.variant}' is not one of {sorted(VARIANTS)}")
    if ref.basis not in BASES:
        raise ReferenceFileError(f"{where}: basis '{ref.basis}' is not one of {list(BASES)}")
    if ref.unit not in UNITS:
        raise ReferenceFileError(f"{where}: unit '{ref.unit}' is not one of {sorted(UNITS)}")
    implied = implied_variant(ref.metric)
    if implied is not None and implied != ref.variant:
        raise ReferenceFileError(
            f"{where}: metric '{ref.metric}' is leuk's {implied} value, but the row's variant is "
            f"'{ref.variant}' (name the key of the paper's variant, e.g. weighted/precision, auroc_hard)"
        )
    if ref.known:
        limit = UNITS[ref.unit][1]
        if not 0 <= ref.value <= limit:
            raise ReferenceFileError(
                f"{where}: value {ref.value:g} is outside 0-{limit:g} for unit '{ref.unit}'"
            )
        if not ref.table:
            raise ReferenceFileError(f"{where}: a value needs the table (or section) it is printed in")
    elif not ref.note:
        raise ReferenceFileError(f"{where}: an empty value needs a note saying why")
    ref.conditions()


def read_references(text: str, origin: str) -> list[Reference]:
    reader = csv.DictReader(io.StringIO(text))
    refs = []
    for row in reader:
        where = f"{origin}, line {reader.line_num}"
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise ReferenceFileError(f"{where}: missing columns {missing}; expected {list(COLUMNS)}")
        fields = {c: (row[c] or "").strip() for c in COLUMNS if c not in ("value", "n")}
        try:
            ref = Reference(
                **fields,
                value=_parse_value(row["value"] or "", where),
                n=_parse_n((row["n"] or "").strip(), where),
            )
            _check(ref, where)
        except ReferenceFileError as err:
            if str(err).startswith(where):
                raise
            raise ReferenceFileError(f"{where}: {err}") from err
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
