"""The results report (issue 14) built from a small committed fixture of real run records
(``tests/fixtures/report_runs``: two seeds of MSEENet and one modified VGG16 at ``budget=cpu``,
their metrics.json, Hydra records and the MSEENet runs' trimmed eval.json)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from leuk.reporting import write_report
from leuk.reporting.evaluations import flatten_evaluation
from leuk.reporting.runs import canonical_override

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "report_runs"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, pd.DataFrame]:
    out = tmp_path_factory.mktemp("report")
    _, csv_path, markdown = write_report([FIXTURE], out=out)
    return markdown, pd.read_csv(csv_path)


def _lines(markdown: str, start: str) -> list[list[str]]:
    """The rows of the markdown table whose first cell starts with ``start``, split into cells."""
    return [
        [c.strip() for c in line.strip("|").split(" | ")]
        for line in markdown.splitlines()
        if line.startswith(f"| {start}")
    ]


def _metric(seed_dir: str, key: str) -> float:
    return json.loads((FIXTURE / seed_dir / "metrics.json").read_text())[key]


def test_seeds_of_a_multirun_and_of_single_runs_are_one_row(report) -> None:
    _, frame = report
    # seed 1 ran in a multirun (Hydra recorded model.pretrained=False), seed 2 alone (=false).
    mseenet = frame[frame.model == "mseenet"]
    assert len(mseenet) == 1 and int(mseenet.runs.iloc[0]) == 2
    expected = (
        _metric("mseenet_paper/seed1", "test/accuracy") + _metric("mseenet_paper/seed2", "test/accuracy")
    ) / 2
    assert mseenet.accuracy_mean.iloc[0] == pytest.approx(expected)
    assert canonical_override("model.pretrained=False") == "model.pretrained=false"
    assert canonical_override("a=None") == "a=null" and canonical_override("a=Falsey") == "a=Falsey"


def test_validation_stands_beside_test(report) -> None:
    markdown, _ = report
    header = _lines(markdown, "model | experiment")[0]
    assert header.index("val accuracy") == header.index("test accuracy") + 1
    assert header[-1] == "train img/s"
    row = _lines(markdown, "vgg16_mod | vgg16_paper")[0]
    test, val = row[header.index("test accuracy")], row[header.index("val accuracy")]
    assert test == f"{_metric('vgg16_paper/seed1', 'test/accuracy'):.3f}"
    assert val == f"{_metric('vgg16_paper/seed1', 'val/accuracy'):.3f}"


def test_paper_column_in_the_papers_variant_with_the_budget_named(report) -> None:
    markdown, _ = report
    rows = _lines(markdown, "vgg16_mod, vgg16_paper")
    by_metric = {r[2]: r for r in rows}
    # The modified VGG16's Table 2 at its own 300 px only, not the image-size study's 250/200/150 px.
    assert by_metric["accuracy"][6] == "0.9659"
    assert [r[6] for r in rows if r[2] == "accuracy"] == ["0.9659"]
    assert by_metric["weighted/precision"][3] == "weighted (inferred)"
    assert by_metric["mcc"][3] == "multiclass (assumed)"
    assert by_metric["accuracy"][1] == "budget=cpu: data.image_size=128 (300), trainer.max_epochs=4 (25)"
    assert by_metric["accuracy"][4] == f"{_metric('vgg16_paper/seed1', 'test/accuracy'):.3f}"
    mseenet = {r[2]: r for r in _lines(markdown, "mseenet, mseenet_paper")}
    assert mseenet["accuracy"][3] == "micro (stated)" and mseenet["accuracy"][6] == "0.9877"
    assert mseenet["f1"][3] == "macro (inferred)"
    assert "±" in mseenet["accuracy"][4] and "±" in mseenet["accuracy"][5]  # test and val, 2 seeds


def test_calibration_and_shift_tables_from_eval_json(report) -> None:
    markdown, frame = report
    records = [json.loads((FIXTURE / f"mseenet_paper/seed{s}/eval.json").read_text()) for s in (1, 2)]
    flats = [flatten_evaluation(r) for r in records]
    calibration = markdown.split("## Calibration")[1].split("## Robustness")[0]
    row = _lines(calibration, "mseenet | mseenet_paper")[0]
    header = _lines(calibration, "model | experiment")[0]
    ece = [f["ece"] for f in flats]
    mean = sum(ece) / 2
    assert row[header.index("ECE")].startswith(f"{mean:.3f} ± ")
    assert row[header.index("evaluated")] == "2"
    assert "vgg16_mod" not in calibration  # no eval.json: no calibration row
    background = markdown.split("### background")[1].split("##")[0]
    cells = _lines(background, "mseenet | mseenet_paper")[0]
    accuracy = [f["shift/background/4/accuracy"] for f in flats]
    assert cells[7].startswith(f"{sum(accuracy) / 2:.3f} ± ")
    shift = next(r for r in records[0]["shift"] if r["shift"] == "background")
    assert flats[0]["shift/background/4/wrong_confident"] == shift["n_wrong_confident"] / shift["n_wrong"]
    row = frame[frame.model == "mseenet"].iloc[0]
    assert row["eval_ece_mean"] == pytest.approx(mean)
    assert row["shift_hed_0.1_accuracy_mean"] == pytest.approx(
        sum(f["shift/hed/0.1/accuracy"] for f in flats) / 2
    )


def test_external_evaluation_is_reported_apart(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(FIXTURE / "mseenet_paper", runs / "mseenet_paper")
    record = json.loads((runs / "mseenet_paper/seed1/eval.json").read_text())
    record.update(external=True, data="folder /data/other_hospital (120 images)", n_images=120)
    record["metrics"] = {"test/accuracy": 0.5, "test/mcc": 0.25, "test/f1": 0.4}
    (runs / "mseenet_paper/seed1/eval_other_hospital.json").write_text(json.dumps(record))
    _, _, markdown = write_report([runs], out=tmp_path / "out")
    external = markdown.split("## External test sets")[1].split("##")[0]
    row = _lines(external, "mseenet | mseenet_paper")[0]
    assert row[6:10] == ["folder /data/other_hospital (120 images)", "1", "120", "0.500"]
    # The run's own evaluation still gives the calibration row, from both seeds.
    assert _lines(markdown.split("## Calibration")[1], "mseenet")[0][6] == "2"
