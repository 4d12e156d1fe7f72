"""The report's tables: markdown (results, noise robustness, comparison with the papers, failed
and unfinished runs) and the CSV frame."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from leuk.reference import Reference
from leuk.reporting.evaluations import external_evaluations, flatten_evaluation, shifts_of
from leuk.reporting.rows import DEFAULT_SELECT, METRICS, NOISE_METRICS, Row, Stat, noise_sigmas, stat_of
from leuk.reporting.runs import canonical_override
from leuk.utils.report import noise_key


def _number(value: float, digits: int = 1) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.{digits}f}"


def md_table(header: Sequence[str], body: Iterable[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    lines = [line(header), "|" + "|".join("---" for _ in header) + "|"]
    lines += [line(cells) for cells in body]
    return "\n".join(lines)


def results_table(rows: Sequence[Row], common: frozenset[str], select: str = DEFAULT_SELECT) -> str:
    header = ["model", "experiment", "data", "split", "size", "setting", "runs", "failed", "unfinished"]
    header += [f"best by {select}"]
    header += [f"{stage} {m}" for m in METRICS for stage in ("test", "val")]
    header += ["n_test", "time/run (s)", "train img/s"]
    body = []
    for row in rows:
        cells = [row.model, row.experiment or "-", row.data, row.split, str(row.image_size)]
        cells += [row.setting(common) or "-", str(len(row.runs)), str(len(row.failed))]
        cells += [str(len(row.unfinished)), row.best_mark]
        for m in METRICS:
            cells += [row.stat(m).format(), row.val(m).format()]
        cells += [_number(row.stat("n_test").mean), row.stat("wall_time_s").format(1)]
        cells.append(row.stat("train_images_per_s").format(1))
        body.append(cells)
    return md_table(header, body)


def noise_table(rows: Sequence[Row], common: frozenset[str], metric: str) -> str:
    """``metric`` by noise σ, mean ± std over each row's runs (rows without noise values left out)."""
    sigmas = noise_sigmas(rows)
    header = ["model", "experiment", "data", "split", "size", "setting", "runs"]
    header += [f"σ={s:g}" for s in sigmas]
    body = []
    for row in rows:
        stats = [stat_of(row.runs, noise_key(s, metric)) for s in sigmas]
        if not any(stat.n for stat in stats):
            continue
        cells = [row.model, row.experiment or "-", row.data, row.split, str(row.image_size)]
        cells += [row.setting(common) or "-", str(len(row.runs))]
        body.append(cells + [stat.format() for stat in stats])
    return md_table(header, body)


def _ours(row: Row, ref: Reference) -> tuple[str, str]:
    """leuk's value in the reference's variant: (test, validation); run-level keys have no validation."""
    if ref.stage_metric:
        test, val = stat_of(row.runs, f"test/{ref.metric}"), row.val(ref.metric)
        return (test.format() if test.n else "n/a (not measured)", val.format() if val.n else "n/a")
    stat = row.stat(ref.metric)
    digits = 2 if ref.unit in ("s", "ms") else 3
    return (stat.format(digits) if stat.n else "n/a (not measured)", "-")


def _merged(refs: Sequence[Reference]) -> list[tuple[Reference, str]]:
    """One line per value: a value two tables print alike (ALDL's Table 2 and Table 4 RGB) once,
    with both sources."""
    merged: dict[tuple, tuple[Reference, list[str]]] = {}
    for ref in refs:
        key = (ref.paper, ref.metric, ref.variant, ref.scaled if ref.known else ref.table)
        if key in merged:
            merged[key][1].append(ref.table)
        else:
            merged[key] = (ref, [ref.table])
    out = []
    for ref, tables in merged.values():
        where = "; ".join(t for t in tables if t)
        out.append((ref, f"{ref.paper}, {where}" if where else ref.paper))
    return out


def _protocol(row: Row) -> str:
    """ "paper's", or what the row's budget changed: its value, and in brackets the experiment's."""
    if not row.budget:
        return "paper's"
    members = row.runs or row.failed or row.unfinished
    changed = []
    for key, theirs in sorted(row.unscaled.items()):
        mine = members[0].lookup(key)
        changed.append(f"{key}={mine}" + (f" ({theirs})" if theirs is not None else ""))
    return f"budget={row.budget}: " + ", ".join(changed)


def comparison_table(rows: Sequence[Row], common: frozenset[str] = frozenset()) -> str:
    header = [
        "run",
        "protocol",
        "metric (leuk key)",
        "variant",
        "ours: test",
        "ours: val",
        "paper",
        "paper runs",
        "source",
    ]
    header += ["note"]
    body = []
    for row in rows:
        for ref, source in _merged(row.references):
            paper = f"{ref.scaled:g}" if ref.known else "n/a"
            test, val = _ours(row, ref)
            variant = f"{ref.variant} ({ref.basis})"
            body.append(
                [
                    row.label(common),
                    _protocol(row),
                    ref.metric,
                    variant,
                    test,
                    val,
                    paper,
                    str(ref.n),
                    source,
                    ref.note,
                ]
            )
    return md_table(header, body) if body else "No reference value applies to these runs."


def _row_cells(row: Row, common: frozenset[str]) -> list[str]:
    return [
        row.model,
        row.experiment or "-",
        row.data,
        row.split,
        str(row.image_size),
        row.setting(common) or "-",
    ]


_ROW_HEADER = ["model", "experiment", "data", "split", "size", "setting"]


def calibration_table(rows: Sequence[Row], common: frozenset[str]) -> str:
    """ECE before and after temperature scaling, and the abstention before and after, per row."""
    header = [*_ROW_HEADER, "evaluated", "accuracy", "ECE", "ECE scaled", "T"]
    header += ["coverage", "accuracy covered", "coverage scaled", "accuracy covered scaled"]
    body = []
    for row in rows:
        if not row.evaluated:
            continue
        cells = [*_row_cells(row, common), str(row.evaluated)]
        for key in ("accuracy", "ece", "ece_scaled", "temperature", "coverage", "accuracy_covered"):
            cells.append(row.evaluation(key).format(2 if key == "temperature" else 3))
        for key in ("coverage_scaled", "accuracy_covered_scaled"):
            cells.append(row.evaluation(key).format())
        body.append(cells)
    return md_table(header, body) if body else ""


def shift_table(rows: Sequence[Row], common: frozenset[str], shift: str, strengths: Sequence[float]) -> str:
    """Accuracy under ``shift`` at each strength beside the clean images', and the share of the
    wrong predictions that stay confident, mean ± std over each row's evaluated runs."""
    header = _ROW_HEADER + ["clean"] + [f"{s:g}" for s in strengths]
    header += [f"confident wrong @{s:g}" for s in strengths]
    body = []
    for row in rows:
        accuracy = [row.evaluation(f"shift/{shift}/{s:g}/accuracy") for s in strengths]
        if not any(stat.n for stat in accuracy):
            continue
        sure = [row.evaluation(f"shift/{shift}/{s:g}/wrong_confident") for s in strengths]
        cells = [*_row_cells(row, common), row.evaluation("accuracy").format()]
        body.append(cells + [stat.format() for stat in accuracy] + [stat.format(2) for stat in sure])
    return md_table(header, body) if body else ""


def row_shifts(rows: Sequence[Row]) -> dict[str, list[float]]:
    return shifts_of([run.evaluation for row in rows for run in row.runs])


def external_table(rows: Sequence[Row], common: frozenset[str]) -> str:
    """Each external test set a row's runs were evaluated on (``external``: another folder)."""
    header = [*_ROW_HEADER, "external test set", "runs", "n_images", "accuracy", "f1", "mcc", "ECE"]
    body = []
    for row in rows:
        by_data: dict[str, list[dict[str, float]]] = {}
        sizes: dict[str, list[int]] = {}
        for run in row.runs:
            for record in external_evaluations(run.evaluations):
                name = str(record.get("data", "?"))
                by_data.setdefault(name, []).append(flatten_evaluation(record))
                sizes.setdefault(name, []).append(int(record.get("n_images", 0)))
        for name, flats in by_data.items():
            stats = [Stat([f[k] for f in flats if k in f]) for k in ("accuracy", "f1", "mcc", "ece")]
            cells = [*_row_cells(row, common), name, str(len(flats)), _number(sum(sizes[name]) / len(flats))]
            body.append(cells + [stat.format() for stat in stats])
    return md_table(header, body) if body else ""


def _first_line(text: str, limit: int = 300) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else "?"
    return line if len(line) <= limit else line[: limit - 1] + "…"


def failed_list(
    rows: Sequence[Row], base: Path, common: frozenset[str] = frozenset(), which: str = "failed"
) -> str:
    """One line per failed run (``which="unfinished"``: per unfinished run): where, what, why."""
    lines = []
    for row in rows:
        for run in getattr(row, which):
            try:
                where = run.path.relative_to(base.resolve())
            except ValueError:
                where = run.path
            overrides = " ".join(o for o in run.overrides if canonical_override(o) not in common) or "-"
            error = _first_line(str(run.failure.get("error", "")))
            lines.append(
                f"- `{where}` ({row.model}, seed {run.lookup('seed')}; overrides: {overrides}): {error}"
            )
    return "\n".join(lines) if lines else "None."


def report_frame(rows: Sequence[Row], common: frozenset[str], select: str = DEFAULT_SELECT) -> pd.DataFrame:
    compared = sorted({ref.metric for row in rows for ref in row.references})
    records = []
    for row in rows:
        rec: dict[str, Any] = {
            "model": row.model,
            "experiment": row.experiment,
            "data": row.data,
            "split": row.split,
            "image_size": row.image_size,
            "setting": row.setting(common),
            "runs": len(row.runs),
            "failed": len(row.failed),
            "unfinished": len(row.unfinished),
            "seeds": " ".join(map(str, row.seeds)),
            "best_by_val": row.best_by_val,
            "selected_on": select,
        }
        for metric in (*METRICS, "n_test", "wall_time_s", "train_images_per_s"):
            stat = row.stat(metric)
            rec[f"{metric}_mean"], rec[f"{metric}_std"] = stat.mean, stat.std
        for metric in METRICS:
            stat = row.val(metric)
            rec[f"val_{metric}_mean"], rec[f"val_{metric}_std"] = stat.mean, stat.std
        for sigma in noise_sigmas([row]):
            for metric in NOISE_METRICS:
                stat = stat_of(row.runs, noise_key(sigma, metric))
                name = f"noise_{sigma:g}_{metric}"
                rec[f"{name}_mean"], rec[f"{name}_std"] = stat.mean, stat.std
        for key in ("ece", "ece_scaled", "temperature", "coverage", "coverage_scaled"):
            stat = row.evaluation(key)
            rec[f"eval_{key}_mean"], rec[f"eval_{key}_std"] = stat.mean, stat.std
        for shift, strengths in row_shifts([row]).items():
            for strength in strengths:
                for what in ("accuracy", "wrong_confident"):
                    stat = row.evaluation(f"shift/{shift}/{strength:g}/{what}")
                    name = f"shift_{shift}_{strength:g}_{what}"
                    rec[f"{name}_mean"], rec[f"{name}_std"] = stat.mean, stat.std
        for metric in compared:
            known = [ref.scaled for ref in row.references if ref.metric == metric and ref.known]
            rec[f"paper_{metric}"] = known[0] if known else math.nan
        rec["paper_source"] = "; ".join(dict.fromkeys(ref.source for ref in row.references))
        records.append(rec)
    return pd.DataFrame.from_records(records)
