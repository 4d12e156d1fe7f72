"""Aggregate run folders into one table: ``python -m leuk.report <run or sweep folders...>``.

Every ``metrics.json`` below the folders given is one completed run, every ``failed.json`` (written
by ``leuk.utils.task.task_wrapper``) one failed run. Runs that differ only in their seed or fold
form one row, with the mean ± sample standard deviation of each test metric and, beside it, of the
same metric on the validation split, the number of runs and of failed runs. Among rows of one model
and protocol that differ in a setting (a sweep's grid), the one with the best validation value of
``--select`` (``val/mcc`` unless told; a ``*loss`` key is minimized) is marked: the test split plays
no part in that choice. The papers' values (``leuk/reference/paper_results.csv``) stand beside
leuk's value in the same variant (weighted, hard-label AUC, ...), on test and validation.
Writes ``report.md`` and ``report.csv`` into the first folder (or ``--out``) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from leuk.reference import Reference, load_references
from leuk.utils.report import noise_key
from leuk.utils.task import FAILED_FILE

METRICS_FILE = "metrics.json"
# The entry point whose failures are runs of the table (a failed leuk.eval leaves failed.json too).
TRAIN_TASK = "leuk.train.train"
METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "mcc", "auroc")
# The metrics of the noise-robustness tables.
NOISE_METRICS = ("accuracy", "f1")
# Overrides that repeat a protocol rather than change it: their runs are averaged in one row.
REPEAT_KEYS = frozenset({"seed", "data.fold", "data.fold_index", "data.split.fold_index"})
# Overrides already shown in a column of their own.
SHOWN_KEYS = frozenset(
    {"experiment", "model", "model.name", "data", "data/split", "data.image_size", "sweep"}
)
_FOLD = re.compile(r",? fold \d+")
# The validation key the best setting is chosen on, unless --select says another.
DEFAULT_SELECT = "val/mcc"
BEST_MARK = "◀ best"


@dataclass
class Run:
    path: Path
    failed: bool
    metrics: dict[str, Any] = field(default_factory=dict)
    failure: dict[str, Any] = field(default_factory=dict)
    config: DictConfig | None = None
    choices: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)

    def lookup(self, key: str) -> Any:
        """A config group's choice, a config value, or what metrics.json / failed.json recorded."""
        if self.choices.get(key) is not None:
            return self.choices[key]
        if self.config is not None:
            value = OmegaConf.select(self.config, key, throw_on_resolution_failure=False)
            if value is not None:
                return value
        recorded = {"model.name": "model", "data.image_size": "image_size", "seed": "seed"}
        if key in recorded:
            return self.metrics.get(recorded[key], self.failure.get(recorded[key]))
        return None

    @property
    def model(self) -> str:
        return str(self.lookup("model.name") or "?")

    @property
    def data(self) -> str:
        if self.choices.get("data"):
            return str(self.choices["data"])
        text = re.sub(r"\s*\(.*\)$", "", str(self.metrics.get("data") or "?"))
        return "/".join(Path(text).parts[-2:]) if "/" in text else text

    @property
    def split(self) -> str:
        text = self.metrics.get("split")
        if not text and self.config is not None and "split" in self.config.get("data", {}):
            text = _describe_split(self.config.data.split)
        if not text:
            text = self.choices.get("data/split") or "?"
        return _FOLD.sub("", str(text))

    @property
    def setting(self) -> tuple[str, ...]:
        kept = []
        for override in self.overrides:
            key = override.split("=", 1)[0].lstrip("+~")
            if key not in REPEAT_KEYS and key not in SHOWN_KEYS:
                kept.append(override)
        return tuple(sorted(kept))

    @property
    def key(self) -> tuple[str, str, str, str, int, tuple[str, ...]]:
        size = self.lookup("data.image_size")
        return (
            str(self.choices.get("experiment") or ""),
            self.data,
            self.split,
            self.model,
            int(size) if isinstance(size, (int, float)) else -1,
            self.setting,
        )


def _describe_split(node: DictConfig) -> str | None:
    """The split's own description (as metrics.json has it), for a run that failed before writing it."""
    try:
        from hydra.utils import instantiate

        return instantiate(node).describe()
    except Exception:
        return None


def _read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def load_run(run_dir: Path) -> Run:
    """The run in ``run_dir`` (a completed run if its metrics.json is newer than any failed.json)."""
    metrics_path, failed_path = run_dir / METRICS_FILE, run_dir / FAILED_FILE
    failed = failed_path.is_file() and (
        not metrics_path.is_file() or failed_path.stat().st_mtime > metrics_path.stat().st_mtime
    )
    run = Run(path=run_dir, failed=failed)
    try:
        if failed:
            run.failure = _read_json(failed_path)
        else:
            run.metrics = _read_json(metrics_path)
    except (OSError, ValueError) as err:
        name = FAILED_FILE if failed else METRICS_FILE
        run.failed = True
        run.failure = {"status": "failed", "error": f"unreadable {name}: {err}"}
    hydra_dir = run_dir / ".hydra"
    if (hydra_dir / "config.yaml").is_file():
        run.config = OmegaConf.load(hydra_dir / "config.yaml")
    if (hydra_dir / "hydra.yaml").is_file():
        choices = OmegaConf.select(OmegaConf.load(hydra_dir / "hydra.yaml"), "hydra.runtime.choices")
        run.choices = OmegaConf.to_container(choices) if choices is not None else {}
    if (hydra_dir / "overrides.yaml").is_file():
        run.overrides = [str(o) for o in OmegaConf.load(hydra_dir / "overrides.yaml")]
    elif run.failure.get("overrides"):
        run.overrides = [str(o) for o in run.failure["overrides"]]
    return run


def collect_runs(folders: Iterable[str | Path]) -> list[Run]:
    """Every run folder below ``folders`` (each counted once, however the folders overlap)."""
    seen: dict[Path, Run] = {}
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"no such folder: {folder}")
        for marker in (*folder.rglob(METRICS_FILE), *folder.rglob(FAILED_FILE)):
            run_dir = marker.parent.resolve()
            if run_dir not in seen:
                seen[run_dir] = load_run(run_dir)
    runs = [run for run in seen.values() if run.failure.get("task") in (None, TRAIN_TASK)]
    return sorted(runs, key=lambda r: str(r.path))


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


def _stat(runs: Sequence[Run], key: str) -> Stat:
    values = [run.metrics.get(key) for run in runs]
    return Stat([float(v) for v in values if isinstance(v, (int, float)) and not math.isnan(v)])


@dataclass
class Row:
    key: tuple[str, str, str, str, int, tuple[str, ...]]
    runs: list[Run]
    failed: list[Run]
    references: list[Reference] = field(default_factory=list)
    # Whether validation (``select``) picks this row among the settings of its model and protocol
    # (``BEST_MARK``, with "(tie)" when other rows share the best value), else "".
    best_mark: str = ""

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
            return _stat(self.runs, f"test/{metric}")
        return _stat(self.runs, metric)

    def val(self, metric: str) -> Stat:
        """``metric`` on the validation split (``val/<metric>``) of the row's selected checkpoints."""
        return _stat(self.runs, f"val/{metric}")

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
        (row.failed if run.failed else row.runs).append(run)
    rows = sorted(groups.values(), key=lambda r: (r.key[:4], r.key[4], r.key[5]))
    for row in rows:
        # Every run must match (a value of fold 0 is not the counterpart of a mean over folds).
        members = row.runs or row.failed
        row.references = [
            ref for ref in references if all(ref.applies(row.model, row.data, r.lookup) for r in members)
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


def _number(value: float, digits: int = 1) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.{digits}f}"


def _md_table(header: Sequence[str], body: Iterable[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    lines = [line(header), "|" + "|".join("---" for _ in header) + "|"]
    lines += [line(cells) for cells in body]
    return "\n".join(lines)


def results_table(rows: Sequence[Row], common: frozenset[str], select: str = DEFAULT_SELECT) -> str:
    header = ["model", "experiment", "data", "split", "size", "setting", "runs", "failed"]
    header += [f"best by {select}"]
    header += [f"{stage} {m}" for m in METRICS for stage in ("test", "val")]
    header += ["n_test", "time/run (s)"]
    body = []
    for row in rows:
        cells = [row.model, row.experiment or "-", row.data, row.split, str(row.image_size)]
        cells += [row.setting(common) or "-", str(len(row.runs)), str(len(row.failed))]
        cells += [row.best_mark]
        for m in METRICS:
            cells += [row.stat(m).format(), row.val(m).format()]
        cells += [_number(row.stat("n_test").mean), row.stat("wall_time_s").format(1)]
        body.append(cells)
    return _md_table(header, body)


def noise_sigmas(rows: Sequence[Row]) -> list[float]:
    """The σ values of every ``noise/<σ>/<metric>`` key the rows' runs recorded (``noise_sigmas``)."""
    keys = {k for row in rows for run in row.runs for k in run.metrics if k.startswith("noise/")}
    return sorted({float(k.split("/")[1]) for k in keys})


def noise_table(rows: Sequence[Row], common: frozenset[str], metric: str) -> str:
    """``metric`` by noise σ, mean ± std over each row's runs (rows without noise values left out)."""
    sigmas = noise_sigmas(rows)
    header = ["model", "experiment", "data", "split", "size", "setting", "runs"]
    header += [f"σ={s:g}" for s in sigmas]
    body = []
    for row in rows:
        stats = [_stat(row.runs, noise_key(s, metric)) for s in sigmas]
        if not any(stat.n for stat in stats):
            continue
        cells = [row.model, row.experiment or "-", row.data, row.split, str(row.image_size)]
        cells += [row.setting(common) or "-", str(len(row.runs))]
        body.append(cells + [stat.format() for stat in stats])
    return _md_table(header, body)


def _ours(row: Row, ref: Reference) -> tuple[str, str]:
    """leuk's value in the reference's variant: (test, validation); run-level keys have no validation."""
    if ref.stage_metric:
        test, val = _stat(row.runs, f"test/{ref.metric}"), row.val(ref.metric)
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


def comparison_table(rows: Sequence[Row], common: frozenset[str] = frozenset()) -> str:
    header = [
        "run",
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
                [row.label(common), ref.metric, variant, test, val, paper, str(ref.n), source, ref.note]
            )
    return _md_table(header, body) if body else "No reference value applies to these runs."


def _first_line(text: str, limit: int = 300) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else "?"
    return line if len(line) <= limit else line[: limit - 1] + "…"


def failed_list(rows: Sequence[Row], base: Path, common: frozenset[str] = frozenset()) -> str:
    lines = []
    for row in rows:
        for run in row.failed:
            try:
                where = run.path.relative_to(base.resolve())
            except ValueError:
                where = run.path
            overrides = " ".join(o for o in run.overrides if o not in common) or "-"
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
                stat = _stat(row.runs, noise_key(sigma, metric))
                name = f"noise_{sigma:g}_{metric}"
                rec[f"{name}_mean"], rec[f"{name}_std"] = stat.mean, stat.std
        for metric in compared:
            known = [ref.scaled for ref in row.references if ref.metric == metric and ref.known]
            rec[f"paper_{metric}"] = known[0] if known else math.nan
        rec["paper_source"] = "; ".join(dict.fromkeys(ref.source for ref in row.references))
        records.append(rec)
    return pd.DataFrame.from_records(records)


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
    parts = [
        "# leuk report",
        "",
        f"Runs from {', '.join(f'`{f}`' for f in folders)}; written {datetime.now():%Y-%m-%d %H:%M}. "
        f"{n_ok} completed, {n_failed} failed.",
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
    ]
    return "\n".join(parts)


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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m leuk.report",
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
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        md_path, csv_path, markdown = write_report(args.folders, args.out, args.references, args.select)
    except (FileNotFoundError, ValueError) as err:
        print(f"leuk.report: {err}", file=sys.stderr)
        return 2
    print(markdown)
    print(f"wrote {md_path} and {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
