"""Collect, aggregate and write ``report.md`` and ``report.csv``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from leuk.reference import load_references
from leuk.reporting.markdown import render_markdown
from leuk.reporting.rows import (
    DEFAULT_SELECT,
    build_rows,
    check_select,
    common_overrides,
    mark_best_by_validation,
)
from leuk.reporting.runs import METRICS_FILE, collect_runs
from leuk.reporting.tables import report_frame
from leuk.utils.task import FAILED_FILE


def write_report(
    folders: Sequence[str | Path],
    out: str | Path | None = None,
    references: str | Path | None = None,
    select: str = DEFAULT_SELECT,
) -> tuple[Path, Path, str]:
    """Collect, aggregate and write; return the two files' paths and the markdown."""
    check_select(select)
    runs = collect_runs(folders)
    if not runs:
        raise FileNotFoundError(f"no {METRICS_FILE} or {FAILED_FILE} below {', '.join(map(str, folders))}")
    rows = build_rows(runs, load_references(references))
    mark_best_by_validation(rows, select)
    out_dir = Path(out) if out is not None else Path(folders[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(rows, folders, out_dir, references, select)
    md_path, csv_path = out_dir / "report.md", out_dir / "report.csv"
    md_path.write_text(markdown)
    report_frame(rows, common_overrides(rows), select).to_csv(csv_path, index=False)
    return md_path, csv_path, markdown
