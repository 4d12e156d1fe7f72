"""``python -m leuk.report``: mean ± sample std over seeds, failed runs listed, the papers' values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from leuk.cli.report import main
from leuk.reference import COLUMNS, load_references
from leuk.reporting import METRICS, write_report
from leuk.train import train
from leuk.utils.task import FAILED_FILE
from tests.helpers import TINY, compose_config

# Two seeds of one protocol, then one run of another model: known values, checked by hand below.
FAKE = {
    "a": {"model": "resnet18", "seed": 1, "accuracy": 0.80, "mcc": 0.60, "n_test": 50, "wall_time_s": 100.0},
    "b": {"model": "resnet18", "seed": 2, "accuracy": 0.90, "mcc": 0.70, "n_test": 50, "wall_time_s": 120.0},
    "c": {"model": "vgg16", "seed": 1, "accuracy": 0.70, "mcc": 0.50, "n_test": 50, "wall_time_s": 300.0},
}


def _fake_metrics(
    model: str, seed: int, accuracy: float, mcc: float, n_test: int, wall_time_s: float
) -> dict:
    metrics = {f"test/{m}": accuracy for m in METRICS}
    metrics.update({"test/mcc": mcc, "n_test": n_test, "wall_time_s": wall_time_s})
    metrics.update(
        {
            "model": model,
            "seed": seed,
            "data": "synthetic (/tmp/cache/synthetic)",
            "split": "ratio 0.8/0.1/0.1",
            "image_size": 64,
            "train_images_per_s": 10.0,
        }
    )
    return metrics


def _fake_sweep(root: Path) -> Path:
    sweep = root / "sweep"
    for name, values in FAKE.items():
        (sweep / name).mkdir(parents=True)
        (sweep / name / "metrics.json").write_text(json.dumps(_fake_metrics(**values)))
    (sweep / "d").mkdir()
    failure = {
        "status": "failed",
        "error": "RuntimeError: CUDA out of memory",
        "overrides": ["model=resnet18", "seed=3"],
        "model": "resnet18",
        "image_size": 64,
        "seed": 3,
    }
    (sweep / "d" / FAILED_FILE).write_text(json.dumps(failure))
    # A failed evaluation in the same tree is not a training run of the table.
    (sweep / "d" / "eval").mkdir()
    evaluation = {"status": "failed", "task": "leuk.eval.evaluate", "error": "FileNotFoundError: no ckpt"}
    (sweep / "d" / "eval" / FAILED_FILE).write_text(json.dumps(evaluation))
    return sweep


def test_mean_and_sample_std_over_seeds(tmp_path: Path) -> None:
    sweep = _fake_sweep(tmp_path)
    md_path, csv_path, markdown = write_report([sweep])
    assert md_path == sweep / "report.md" and csv_path == sweep / "report.csv"
    table = pd.read_csv(csv_path)
    resnet = table[(table.model == "resnet18") & (table.runs > 0)].iloc[0]
    assert resnet.runs == 2
    assert resnet.accuracy_mean == pytest.approx(0.85)
    # Sample standard deviation (ddof=1) of 0.8 and 0.9: 0.1 / √2.
    assert resnet.accuracy_std == pytest.approx(0.1 / math.sqrt(2))
    assert resnet.mcc_mean == pytest.approx(0.65)
    assert resnet.wall_time_s_mean == pytest.approx(110.0)
    assert resnet.seeds == "1 2"
    vgg = table[table.model == "vgg16"].iloc[0]
    assert vgg.runs == 1 and vgg.accuracy_mean == pytest.approx(0.70) and math.isnan(vgg.accuracy_std)
    assert "0.850 ± 0.071" in markdown
    assert "ddof = 1" in markdown
    # A single run shows its value without a spread.
    assert "| 0.700 |" in markdown


def test_failed_run_is_counted_and_listed(tmp_path: Path) -> None:
    sweep = _fake_sweep(tmp_path)
    _, csv_path, markdown = write_report([sweep], out=tmp_path / "out")
    assert (tmp_path / "out" / "report.md").is_file()
    table = pd.read_csv(csv_path)
    assert table.failed.sum() == 1
    assert table.runs.sum() == 3
    assert "3 completed, 1 failed" in markdown
    failed_section = markdown.split("## Failed runs", 1)[1]
    assert "RuntimeError: CUDA out of memory" in failed_section
    assert "sweep/d" in failed_section and "seed 3" in failed_section
    assert "no ckpt" not in markdown


def _hydra_record(folder: Path, config_name: str, overrides: list[str]) -> None:
    """The .hydra/ folder Hydra writes when a run starts (before the task runs)."""
    hydra_dir = folder / ".hydra"
    hydra_dir.mkdir(parents=True)
    config = {"task_name": config_name, "seed": 4, "model": {"name": "resnet18"}, "data": {"image_size": 64}}
    (hydra_dir / "config.yaml").write_text(json.dumps(config))
    hydra = {"hydra": {"job": {"config_name": config_name}, "runtime": {"choices": {"model": "resnet18"}}}}
    (hydra_dir / "hydra.yaml").write_text(json.dumps(hydra))
    (hydra_dir / "overrides.yaml").write_text(json.dumps(overrides))


def test_killed_run_is_counted_and_listed_as_unfinished(tmp_path: Path) -> None:
    """A training run killed before it wrote metrics.json or failed.json (out of memory, a wall-time
    limit, Ctrl-C twice) left only what Hydra wrote at its start: it counts as unfinished."""
    sweep = _fake_sweep(tmp_path)
    _hydra_record(sweep / "killed", "train", ["model=resnet18", "seed=4"])
    # Not training runs: an evaluation's folder, and a finished run's (both have .hydra/ too).
    _hydra_record(sweep / "d" / "eval", "eval", [])
    _hydra_record(sweep / "a", "train", ["model=resnet18", "seed=1"])
    _, csv_path, markdown = write_report([sweep])
    table = pd.read_csv(csv_path)
    assert (table.runs.sum(), table.failed.sum(), table.unfinished.sum()) == (3, 1, 1)
    assert "3 completed, 1 failed, 1 unfinished" in markdown
    unfinished = markdown.split("## Unfinished runs", 1)[1]
    assert "`killed` (resnet18, seed 4" in unfinished and "killed, or still running" in unfinished
    assert "`a`" not in unfinished and "eval" not in unfinished


def test_unreadable_metrics_file_counts_as_failed(tmp_path: Path) -> None:
    sweep = _fake_sweep(tmp_path)
    (sweep / "e").mkdir()
    (sweep / "e" / "metrics.json").write_text('{"test/accuracy": 0.')  # a job killed mid-write
    _, _, markdown = write_report([sweep])
    assert "3 completed, 2 failed" in markdown
    assert "unreadable metrics.json" in markdown


def test_folds_of_one_protocol_are_one_row(tmp_path: Path) -> None:
    for fold in (0, 1):
        metrics = _fake_metrics(**FAKE["a"])
        metrics["split"] = f"5-fold, fold {fold} (val 0.1 of train)"
        (tmp_path / f"fold{fold}").mkdir()
        (tmp_path / f"fold{fold}" / "metrics.json").write_text(json.dumps(metrics))
    table = pd.read_csv(write_report([tmp_path])[1])
    assert len(table) == 1 and table.runs[0] == 2
    assert table.split[0] == "5-fold (val 0.1 of train)"


def test_paper_values_stand_beside_the_runs(tmp_path: Path) -> None:
    sweep = _fake_sweep(tmp_path)
    refs = tmp_path / "refs.csv"
    # Columns: paper, table, model, dataset, split, config, metric, variant, basis, value, unit, n, note.
    refs.write_text(
        ",".join(COLUMNS)
        + "\n"
        + "Paper A,Table 2,resnet18,,80/10/10,data.image_size=64,accuracy,micro,stated,0.97,fraction,1,"
        + "a test value\n"
        + "Paper A,,resnet18,,80/10/10,data.image_size=64,mcc,multiclass,assumed,,fraction,1,"
        + "fill from Paper A\n"
        + "Paper B,Table 1,resnet18,,80/10/10,data.image_size=224,accuracy,micro,stated,50,percent,1,"
        + "another protocol: must not match\n"
    )
    _, csv_path, markdown = write_report([sweep], references=refs)
    comparison = markdown.split("## Comparison with the papers", 1)[1].split("## Failed runs", 1)[0]
    # leuk's test value, its validation value (none in these runs), the paper's, its runs, the source.
    assert (
        "| accuracy | micro (stated) | 0.850 ± 0.071 | n/a | 0.97 | 1 | Paper A, Table 2 | a test value |"
        in comparison
    )
    assert (
        "| mcc | multiclass (assumed) | 0.650 ± 0.071 | n/a | n/a | 1 | Paper A | fill from Paper A |"
        in comparison
    )
    assert "Paper B" not in comparison
    table = pd.read_csv(csv_path)
    resnet = table[(table.model == "resnet18") & (table.runs > 0)].iloc[0]
    assert resnet.paper_accuracy == pytest.approx(0.97) and math.isnan(resnet.paper_mcc)
    assert math.isnan(table[table.model == "vgg16"].iloc[0].paper_accuracy)


def test_packaged_reference_values_are_sourced() -> None:
    """Every value names where it comes from, in which variant, over how many runs."""
    from leuk.models.registry import get_model_entry
    from leuk.reference import implied_variant
    from tests.test_configs import all_options

    experiments = {o for g, o in all_options() if g == "experiment"}
    refs = load_references()
    assert refs
    for ref in refs:
        if ref.model:
            get_model_entry(ref.model)
        # A key of leuk's whose variant is the row's (the loader checks they agree).
        assert implied_variant(ref.metric) == ref.variant, ref
        for key, value in ref.conditions():
            if key == "experiment":
                assert value in experiments, ref
        assert ref.known or ref.note, ref
        if ref.known and ref.stage_metric:
            # On leuk's scale, as metrics.json holds them: a percentage read as a fraction fails here.
            assert 0 < ref.scaled <= 1, ref
            assert ref.table and ref.n >= 1, ref
    known = {(r.paper.split()[0], r.table, r.metric, round(r.scaled, 6)) for r in refs if r.known}
    # The issue's figure (now a whole-method time), and the abstracts' headline values.
    assert ("ALDL", "Table 4", "method_s_per_image", 4.25) in known
    assert ("MobileNet_M", "Table 10; abstract", "accuracy", 0.9533) in known
    assert {k[0] for k in known} == {"ALDL", "modified", "MobileNet_M", "MCB-HyperNet", "MSEENet"}


def test_cli_prints_and_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = _fake_sweep(tmp_path)
    assert main([str(sweep), "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "| resnet18 |" in out and "wrote" in out
    assert (tmp_path / "r" / "report.csv").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 2
    assert "no metrics.json" in capsys.readouterr().err


def test_two_real_runs_and_a_failed_one(tmp_path: Path) -> None:
    """Two seeds of a one-batch training, and one that fails: task_wrapper leaves failed.json."""
    runs = tmp_path / "runs"
    common = [*TINY, "logger=none", "trainer.fast_dev_run=true"]
    for seed in (1, 2):
        train(compose_config([*common, f"seed={seed}"], output_dir=runs / f"seed{seed}"))
    broken = compose_config([*common, "optimizer.lr=-1.0"], output_dir=runs / "broken")
    with pytest.raises(ValueError, match="learning rate"):
        train(broken)
    failure = json.loads((runs / "broken" / FAILED_FILE).read_text())
    assert failure["status"] == "failed" and "learning rate" in failure["error"]
    assert failure["model"] == "mcb_hypernet" and failure["task"] == "leuk.train.train"

    _, csv_path, markdown = write_report([runs])
    values = [json.loads((runs / f"seed{s}" / "metrics.json").read_text()) for s in (1, 2)]
    table = pd.read_csv(csv_path)
    row = table[table.runs == 2].iloc[0]
    for metric in ("accuracy", "f1", "mcc"):
        expected = [v[f"test/{metric}"] for v in values]
        assert row[f"{metric}_mean"] == pytest.approx(np.mean(expected))
        assert row[f"{metric}_std"] == pytest.approx(np.std(expected, ddof=1), abs=1e-12)
    assert table.failed.sum() == 1
    assert "ValueError" in markdown.split("## Failed runs", 1)[1]


@pytest.mark.slow
def test_sweep_with_a_failing_job(joblib_sweep, tmp_path: Path) -> None:
    """Hydra runs every job of the batch: the failing one leaves failed.json with its overrides."""
    sweep = joblib_sweep.sweep
    assert joblib_sweep.returncode != 0, "a failed job must fail the sweep"
    assert (sweep / "0" / "metrics.json").is_file()
    failure = json.loads((sweep / "1" / FAILED_FILE).read_text())
    assert "optimizer.lr=-1.0" in failure["overrides"] and failure["task"] == "leuk.train.train"

    out = tmp_path / "report"
    write_report([sweep], out=out)
    table = pd.read_csv(out / "report.csv")
    assert sorted(zip(table.setting, table.runs, table.failed, strict=True)) == [
        ("optimizer.lr=-1.0", 0, 1),
        ("optimizer.lr=0.001", 1, 0),
    ]
    assert "Invalid learning rate" in (out / "report.md").read_text()


def test_noise_robustness_table(tmp_path: Path) -> None:
    """Runs with noise/<σ>/<metric> values (noise_sigmas): a table by σ, mean ± std over seeds."""
    sweep = tmp_path / "noise"
    for name, seed, clean, noisy in (("a", 1, 0.9, 0.7), ("b", 2, 0.8, 0.5)):
        metrics = _fake_metrics("mobilenet_m", seed, clean, 0.5, 20, 10.0)
        metrics.update({"noise/0/accuracy": clean, "noise/8/accuracy": noisy})
        metrics.update({"noise/0/f1": clean, "noise/8/f1": noisy})
        (sweep / name).mkdir(parents=True)
        (sweep / name / "metrics.json").write_text(json.dumps(metrics))
    _, csv_path, markdown = write_report([sweep])
    assert "## Gaussian-noise robustness" in markdown and "σ=8" in markdown
    row = pd.read_csv(csv_path).iloc[0]
    assert row.noise_0_accuracy_mean == pytest.approx(0.85)
    assert row.noise_8_accuracy_mean == pytest.approx(0.6)
    assert row.noise_8_accuracy_std == pytest.approx(0.2 / math.sqrt(2))
    assert f"0.600 ± {0.2 / math.sqrt(2):.3f}" in markdown
    # Runs without noise values give no such section.
    assert "Gaussian-noise" not in write_report([_fake_sweep(tmp_path)])[2]


def test_export_keeps_the_record_without_checkpoints_or_absolute_paths(tmp_path: Path) -> None:
    """--export: each run's record to commit, image paths relative to the data root, no checkpoint;
    the report of the copy equals the report of the runs."""
    sweep = _fake_sweep(tmp_path)
    data_root = tmp_path / "data"
    for name in FAKE:
        run = sweep / name
        (run / ".hydra").mkdir()
        (run / ".hydra" / "config.yaml").write_text("seed: 1\n")
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "last.ckpt").write_bytes(b"weights")
        metrics = json.loads((run / "metrics.json").read_text())
        metrics["best_checkpoint"] = str(run.resolve() / "checkpoints" / "last.ckpt")
        (run / "metrics.json").write_text(json.dumps(metrics))
        evaluation = {"external": False, "data": f"test split of {run.resolve() / 'split.csv'}"}
        (run / "eval.json").write_text(json.dumps(evaluation))
        images = [data_root / "Original" / "Benign" / "a.jpg", data_root / "Original" / "Pro" / "b.jpg"]
        pd.DataFrame({"path": [str(p) for p in images], "label": [0, 3], "split": ["train", "test"]}).to_csv(
            run / "split.csv", index=False
        )
    out = tmp_path / "results"
    assert main([str(sweep), "--export", str(out), "--data-root", str(data_root)]) == 0
    for name in FAKE:
        assert pd.read_csv(out / name / "split.csv")["path"].tolist() == [
            "Original/Benign/a.jpg",
            "Original/Pro/b.jpg",
        ]
        assert (
            json.loads((out / name / "metrics.json").read_text())["best_checkpoint"]
            == "checkpoints/last.ckpt"
        )
        assert (out / name / ".hydra" / "config.yaml").is_file()
        # A description naming a file of the run keeps the file, not the machine's folder.
        assert json.loads((out / name / "eval.json").read_text())["data"] == "test split of split.csv"
    assert not list(out.rglob("*.ckpt"))
    assert json.loads((out / "d" / FAILED_FILE).read_text())["status"] == "failed"
    pd.testing.assert_frame_equal(pd.read_csv(out / "report.csv"), pd.read_csv(write_report([sweep])[1]))
    # An image outside the data root given is named, not exported with an absolute path.
    assert (
        main([str(sweep), "--export", str(tmp_path / "again"), "--data-root", str(tmp_path / "other")]) == 2
    )
