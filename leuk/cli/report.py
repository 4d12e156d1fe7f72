"""``python -m leuk.cli.report <run or sweep folders...>`` (also ``python -m leuk.report`` and
``leuk-report``): mean ± std over seeds and folds of every run below the folders, beside the papers'
values; writes ``report.md`` and ``report.csv`` into the first folder (or ``--out``) and prints the
table. The work is ``leuk.reporting.write_report``. ``--export DEST --data-root ROOT`` first copies
the runs' records to commit (``leuk.reporting.export``) and reports the copy."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from leuk.reporting import DEFAULT_SELECT, write_report
from leuk.reporting.export import ExportError, export_runs

# The console script's name, as every command prints it (``leuk.cli.errors``).
PROG = "leuk-report"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Mean ± standard deviation over seeds and folds of every run below the folders given, "
        "beside the papers' values; writes report.md and report.csv.",
    )
    parser.add_argument("folders", nargs="+", help="run or sweep folders (searched recursively)")
    parser.add_argument("--out", help="where to write report.md and report.csv (default: the first folder)")
    parser.add_argument(
        "--references", help="a CSV of paper values in place of the packaged leuk/reference/paper_results.csv"
    )
    parser.add_argument(
        "--select",
        default=DEFAULT_SELECT,
        help=f"the validation key that marks the best setting (default {DEFAULT_SELECT}; a *loss key is "
        "minimized, others maximized); never a test key",
    )
    parser.add_argument(
        "--export",
        metavar="DEST",
        help="first copy each run's record (metrics.json, eval*.json, .hydra/, split.csv with paths "
        "relative to --data-root; no checkpoints or images) below DEST, and report DEST",
    )
    parser.add_argument("--data-root", help="with --export: the data root the runs' image paths lie below")
    args = parser.parse_args(argv)
    if args.export and (not args.data_root or len(args.folders) != 1):
        parser.error("--export takes one run or sweep folder and --data-root")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.export:
            exported = export_runs(args.folders[0], args.export, args.data_root)
            print(f"exported {len(exported)} runs to {args.export}")
            args.folders = [args.export]
        md_path, csv_path, markdown = write_report(args.folders, args.out, args.references, args.select)
    except (FileNotFoundError, ValueError, ExportError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    print(markdown)
    print(f"wrote {md_path} and {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
