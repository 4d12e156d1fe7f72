"""Aggregate run folders into one table (the library behind ``python -m leuk.report``).

Every ``metrics.json`` below the folders given is one completed run, every ``failed.json`` (written
by ``leuk.utils.task.task_wrapper``) one failed run. Runs that differ only in their seed or fold
form one row, with the mean ± sample standard deviation of each test metric and, beside it, of the
same metric on the validation split, the number of runs and of failed runs. Among rows of one model
and protocol that differ in a setting (a sweep's grid), the one with the best validation value of
``select`` (``val/mcc`` unless told; a ``*loss`` key is minimized) is marked: the test split plays
no part in that choice. The papers' values (``leuk/reference/paper_results.csv``) stand beside
leuk's value in the same variant (weighted, hard-label AUC, ...), on test and validation.

- ``runs``: loading run folders (``Run``, ``load_run``, ``collect_runs``);
- ``rows``: aggregation into rows (``Stat``, ``Row``, ``build_rows``, ``mark_best_by_validation``);
- ``tables``: markdown tables and the CSV frame; ``markdown``: the whole document;
- ``write``: ``write_report``, all of the above in order.
"""

from leuk.reporting.markdown import render_markdown
from leuk.reporting.rows import (
    BEST_MARK,
    DEFAULT_SELECT,
    METRICS,
    NOISE_METRICS,
    Row,
    Stat,
    build_rows,
    check_select,
    common_overrides,
    mark_best_by_validation,
)
from leuk.reporting.runs import FAILED_FILE, METRICS_FILE, TRAIN_TASKS, Run, collect_runs, load_run
from leuk.reporting.tables import comparison_table, noise_table, report_frame, results_table
from leuk.reporting.write import write_report

__all__ = [
    "BEST_MARK",
    "DEFAULT_SELECT",
    "FAILED_FILE",
    "METRICS",
    "METRICS_FILE",
    "NOISE_METRICS",
    "TRAIN_TASKS",
    "Row",
    "Run",
    "Stat",
    "build_rows",
    "check_select",
    "collect_runs",
    "common_overrides",
    "comparison_table",
    "load_run",
    "mark_best_by_validation",
    "noise_table",
    "render_markdown",
    "report_frame",
    "results_table",
    "write_report",
]
