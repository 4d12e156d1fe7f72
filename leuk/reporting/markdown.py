"""The report as one markdown document."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from leuk.reporting.rows import DEFAULT_SELECT, NOISE_METRICS, Row, common_overrides, noise_sigmas
from leuk.reporting.tables import (
    calibration_table,
    comparison_table,
    external_table,
    failed_list,
    noise_table,
    results_table,
    row_shifts,
    shift_table,
)


def _evaluation_sections(rows: Sequence[Row], common: frozenset[str]) -> list[str]:
    """Calibration, shift and external test sets from the runs' ``leuk.eval`` records."""
    parts: list[str] = []
    calibration = calibration_table(rows, common)
    if calibration:
        parts += [
            "## Calibration (`leuk.eval`)",
            "",
            "From each run's `eval.json` (the tested checkpoint on its own test split; `evaluated`: "
            "how many of the row's runs have one), mean ± std over them. ECE: expected calibration "
            "error of the top-class probability (equal-width bins); `ECE scaled` after temperature "
            "scaling with `T` fitted on the run's validation split only (n/a where the protocol has "
            "no validation split); `coverage`: the share of test images whose top probability reaches "
            "the abstention threshold, `accuracy covered`: the accuracy on them, before and after "
            "scaling.",
            "",
            calibration,
            "",
        ]
    shifts = row_shifts(rows)
    if shifts:
        parts += [
            "## Robustness to shift (`leuk.eval`)",
            "",
            "Test accuracy under each shift of `leuk.shifts` at each strength (columns) beside the "
            "clean images', mean ± std over the evaluated runs; `confident wrong @s`: the share of "
            "the wrong predictions at strength s whose top probability still reaches the abstention "
            "threshold (abstention helps only where it is low). Strengths: `hed` the half-width "
            "of the stain-density jitter, `blur` the Gaussian σ in px, `jpeg` the quality, `brightness` and "
            "`scale` the factors, `background` the dilation in px of the cell mask kept on black.",
            "",
        ]
        for shift, strengths in shifts.items():
            parts += [f"### {shift}", "", shift_table(rows, common, shift, strengths), ""]
    external = external_table(rows, common)
    if external:
        parts += [
            "## External test sets (`leuk.eval data.root=...`)",
            "",
            "Evaluations on another folder than the run's split: not the test split the table above "
            "reports, and not selected on.",
            "",
            external,
            "",
        ]
    return parts


def render_markdown(
    rows: Sequence[Row],
    folders: Sequence[str | Path],
    base: Path,
    references: str | Path | None = None,
    select: str = DEFAULT_SELECT,
) -> str:
    common = common_overrides(rows)
    n_ok = sum(len(r.runs) for r in rows)
    n_failed = sum(len(r.failed) for r in rows)
    n_unfinished = sum(len(r.unfinished) for r in rows)
    parts = [
        "# leuk report",
        "",
        f"Runs from {', '.join(f'`{f}`' for f in folders)}; written {datetime.now():%Y-%m-%d %H:%M}. "
        f"{n_ok} completed, {n_failed} failed, {n_unfinished} unfinished.",
        "",
        "One row per model × protocol; runs that differ only in seed or fold are one row. Values are "
        "the mean ± sample standard deviation (ddof = 1) over the row's completed runs; a row of one "
        "run shows its value alone. Metrics of each run's selected checkpoint (`metrics.json`), on the "
        "test split (`test`) and beside it on the validation split (`val`; n/a where the protocol has "
        "none): accuracy (micro), precision, recall (sensitivity), specificity and F1 (macro over "
        "classes), MCC, AUROC (macro one-vs-rest, from probabilities). `n_test`: test images per run "
        "(mean); `time/run`: wall time of a whole run in seconds (setup, training and test); "
        "`train img/s`: training images per second over the run's training epochs.",
        "",
        f"`best by {select}`: among rows of one model, experiment, data and split, the row whose mean "
        f"{select} is {'lowest' if select.endswith('loss') else 'highest'} is marked: the setting "
        "validation selects (choose another key with `--select`). Its test values are the ones to "
        "report; the best test value among the rows is a choice made on the test split.",
    ]
    if common:
        parts += ["", "Overrides common to every row: " + " ".join(f"`{o}`" for o in sorted(common)) + "."]
    parts += ["", results_table(rows, common, select), "", "## Comparison with the papers", ""]
    parts += [
        f"Values from `{references or 'leuk/reference/paper_results.csv'}`, as fractions (seconds for "
        "times). Each paper value stands beside leuk's value in the paper's variant (the `variant` "
        "column: how the paper averages over classes or computes its AUC, and whether the paper states "
        "it or its numbers imply it), on test and on validation, mean ± std over the row's runs; "
        "`paper runs`: how many runs the paper's value averages. n/a (not measured): leuk writes no "
        "such key for these runs. `protocol`: paper's, or the budget the row ran under "
        "(`budget=cpu`) with the values it set and, in brackets, the paper protocol's: the paper's "
        "value is still its counterpart, at a smaller scale.",
        "",
        comparison_table(rows, common),
        "",
    ]
    parts += _evaluation_sections(rows, common)
    if noise_sigmas(rows):
        parts += [
            "## Gaussian-noise robustness",
            "",
            "Test metrics of each run's best checkpoint on copies of its test split with zero-mean "
            "Gaussian noise of σ (0–255 scale, per pixel and channel; the run's `noise_sigmas`), mean ± "
            "std over the row's runs.",
            "",
        ]
        for metric in NOISE_METRICS:
            parts += [f"### {metric}", "", noise_table(rows, common, metric), ""]
    parts += [
        "## Failed runs",
        "",
        failed_list(rows, base, common),
        "",
        "## Unfinished runs",
        "",
        "Training runs that started (Hydra wrote `.hydra/`) but left neither `metrics.json` nor "
        "`failed.json`: killed (out of memory, a time limit, a signal), or still running.",
        "",
        failed_list(rows, base, common, which="unfinished"),
        "",
    ]
    return "\n".join(parts)
