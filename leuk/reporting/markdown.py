"""The report as one markdown document."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from leuk.reporting.rows import DEFAULT_SELECT, NOISE_METRICS, Row, common_overrides, noise_sigmas
from leuk.reporting.tables import comparison_table, failed_list, noise_table, results_table


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
        "(mean); `time/run`: wall time of a whole run in seconds (setup, training and test).",
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
        "such key for these runs.",
        "",
        comparison_table(rows, common),
        "",
    ]
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
