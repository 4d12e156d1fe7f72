"""``leuk.eval`` on a tiny run's checkpoint, the training run's plots, and the evaluation parts."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from leuk.abstention import abstention, coverage_curve
from leuk.cli.eval import evaluate
from leuk.config.validate import ConfigError
from leuk.data.prediction import PredictionDataModule, add_noise
from leuk.explain import NoConvolutionError, last_conv_layer
from leuk.hybrid import require_xgboost
from leuk.plots import load_history, training_curves_plot
from leuk.predictions import predictions_table
from tests.helpers import compose_config
from tests.tiny_run import tiny_run


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("runs"))


def best_checkpoint(run: Path) -> str:
    return json.loads((run / "metrics.json").read_text())["best_checkpoint"]


def test_training_writes_plots_and_per_class_metrics(run_dir: Path) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    expected = {"confusion_matrix", "roc", "misclassified", "training_curves"}
    assert set(metrics["plots"]) == expected
    for name in expected:
        path = run_dir / metrics["plots"][name]
        assert path.is_file() and path.stat().st_size > 1000, name
        assert path.read_bytes()[:4] == b"\x89PNG"
    for name in metrics["class_names"]:
        for measure in ("precision", "recall", "specificity", "f1", "auroc"):
            assert 0.0 <= metrics[f"test/{measure}/{name}"] <= 1.0
    # Four classes: no positive-class keys; the confusion cells are in the matrix, not listed.
    assert not [k for k in metrics if "/pos/" in k or "/confusion/" in k]
    assert sum(map(sum, metrics["test/confusion_matrix"])) == metrics["n_test"]


def test_eval_writes_every_part(run_dir: Path, tmp_path: Path) -> None:
    overrides = [
        f"ckpt_path={best_checkpoint(run_dir)}",
        "noise_sigmas=[0,8]",
        "latency_warmup=1",
        "latency_iters=3",
        "latency_batch_size=2",
        "xgboost=true",
        "xgboost_params.n_estimators=5",
        "gradcam=true",
        "gradcam_per_class=1",
        "shifts=[blur,background]",
        "shift_strengths.blur=[1.0]",
    ]
    result = evaluate(compose_config(overrides, output_dir=tmp_path, config_name="eval"))
    saved = json.loads((tmp_path / "eval.json").read_text())
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert saved["n_images"] == trained["n_test"]
    assert saved["metrics"]["test/confusion_matrix"] == trained["test/confusion_matrix"]

    # The evaluation reproduces the training run's test metrics, and σ = 0 reproduces those.
    summary = {
        k: v for k, v in result["metrics"].items() if k.count("/") == 1 and k != "test/confusion_matrix"
    }
    assert summary
    for key, value in summary.items():
        assert value == pytest.approx(trained[key], abs=1e-5), key
    zero, eight = saved["noise"]
    assert zero["sigma"] == 0 and eight["sigma"] == 8
    for key, value in summary.items():
        assert zero[key] == pytest.approx(value, abs=1e-6), key
    assert 0.0 <= eight["test/accuracy"] <= 1.0

    a = saved["abstention"]
    assert a["threshold"] == 0.7
    assert a["n_uncertain"] == sum(a["uncertain_by_true_class"].values())
    assert a["curve"][0] == {
        "threshold": 0.0,
        "coverage": 1.0,
        "accuracy": pytest.approx(trained["test/accuracy"]),
    }

    latency = saved["latency"]
    assert 0 < latency["latency_ms_median"] <= latency["latency_ms_p90"]
    assert latency["inference_images_per_s"] > 0

    xgb = saved["xgboost"]
    assert xgb["n_features"] > 0 and xgb["n_train"] == trained["n_train"]
    assert 0.0 <= xgb["test"]["test/accuracy"] <= 1.0 and xgb["test"]["n_test"] == trained["n_test"]
    assert "val" in xgb

    assert saved["external"] is False
    rows = {(r["shift"], r["strength"]): r for r in saved["shift"]}
    assert set(rows) == {("blur", 1.0), ("background", 4.0)}
    for row in rows.values():
        assert 0.0 <= row["test/accuracy"] <= 1.0
        assert 0 <= row["n_wrong_confident"] <= row["n_wrong"] <= trained["n_test"]
    c = saved["calibration"]
    # Fitted on the run's validation split: a temperature, and ECE before and after it.
    assert c["temperature"] > 0 and 0.0 <= c["ece"] <= 1.0 and 0.0 <= c["ece_scaled"] <= 1.0
    assert sum(c["reliability"]["counts"]) == trained["n_test"]
    assert c["abstention_scaled"]["n_images"] == trained["n_test"]

    assert saved["gradcam"]["images"] == len(trained["class_names"])
    for name in ("confusion_matrix", "roc", "misclassified", "noise", "coverage", "reliability", "gradcam"):
        assert (tmp_path / saved["plots"][name]).is_file(), name
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert len(predictions) == trained["n_test"]
    assert (predictions["true_class"] == predictions["predicted_class"]).mean() == pytest.approx(
        trained["test/accuracy"]
    )


def test_eval_on_a_folder(run_dir: Path, tmp_path: Path) -> None:
    """data=all data.root=<class folders>: every image of the folder, classes matched by name.
    Written into a (copy of the) finished training folder: evaluation is never refused there."""
    split = pd.read_csv(run_dir / "split.csv")
    root = Path(split["path"][0]).parent.parent
    overrides = [
        f"ckpt_path={best_checkpoint(run_dir)}",
        "data=all",
        f"data.root={root}",
        "noise_sigmas=[0]",
        "latency=false",
        "shifts=[]",
    ]
    out = tmp_path / "run"
    shutil.copytree(run_dir, out, ignore=shutil.ignore_patterns("checkpoints"))
    metrics = (out / "metrics.json").read_bytes()
    result = evaluate(compose_config(overrides, output_dir=out, config_name="eval"))
    assert result["n_images"] == len(split)
    assert result["external"] is True and result["shift"] == []
    assert "latency" not in result and "xgboost" not in result
    assert (out / "eval.json").is_file() and (out / "metrics.json").read_bytes() == metrics


def test_eval_config_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ckpt_path: required"):
        evaluate(compose_config([], output_dir=tmp_path, config_name="eval"))
    cfg = compose_config(
        ["ckpt_path=x.ckpt", "abstain_threshold=1.5", "noise_sigmas=[0,-2]"], tmp_path, "eval"
    )
    with pytest.raises(ConfigError, match=r"abstain_threshold(.|\n)*noise_sigmas"):
        evaluate(cfg)


def test_noise_is_seeded_clipped_and_zero_at_sigma_zero() -> None:
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(add_noise(x, 0.0, torch.Generator().manual_seed(1)), x.float())
    a = add_noise(x, 10.0, torch.Generator().manual_seed(1))
    b = add_noise(x, 10.0, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert not torch.equal(a, x.float())
    assert a.min() >= 0 and a.max() <= 255
    # Zero mean, σ = 10 per pixel and channel (away from the clipped ends).
    mid = torch.full((1, 3, 64, 64), 128, dtype=torch.uint8)
    diff = add_noise(mid, 10.0, torch.Generator().manual_seed(2)) - 128
    assert abs(float(diff.mean())) < 0.5 and float(diff.std()) == pytest.approx(10.0, rel=0.05)


def test_noisy_batches_are_those_of_the_seeded_generator_in_order() -> None:
    """The prediction loader's noisy batches: noise drawn per batch, in order, from one generator
    seeded afresh for each predict call (the values leuk gave before it went through trainer.predict)."""
    images = np.random.default_rng(0).integers(0, 256, (5, 6, 6, 3), dtype=np.uint8)
    clean = PredictionDataModule(
        [f"{i}" for i in range(5)], 6, labels=[0, 1, 0, 1, 0], batch_size=2, images=images
    )
    noisy = clean.noisy(5.0, seed=3)
    noisy.setup()
    generator = torch.Generator().manual_seed(3)
    for _ in range(2):  # a second predict call draws the same noise again
        expected = [
            add_noise(torch.from_numpy(images[i : i + 2]).permute(0, 3, 1, 2), 5.0, generator)
            for i in (0, 2, 4)
        ]
        got = list(noisy.predict_dataloader())
        assert [x.shape[0] for x, _ in got] == [2, 2, 1]
        for (x, y), want in zip(got, expected, strict=True):
            assert torch.equal(x, want) and y.dtype == torch.int64
        generator = torch.Generator().manual_seed(3)
    zero = next(iter(clean.noisy(0.0, seed=3).predict_dataloader()))[0]
    assert torch.equal(zero, torch.from_numpy(images[:2]).permute(0, 3, 1, 2).float())


def test_predictions_table_columns() -> None:
    probs = np.array([[0.9, 0.1], [0.4, 0.6]], np.float32)
    frame = predictions_table(["a.png", "b.png"], probs, ["hem", "all"], 0.7, true_labels=[0, 0])
    assert list(frame.columns) == [
        "path",
        "true_class",
        "predicted_class",
        "confidence",
        "uncertain",
        "prob_hem",
        "prob_all",
    ]
    assert frame["predicted_class"].tolist() == ["hem", "all"] and frame["uncertain"].tolist() == [
        False,
        True,
    ]
    without = predictions_table([], np.zeros((0, 2)), ["hem", "all"], 0.7)
    assert list(without.columns) == [
        "path",
        "predicted_class",
        "confidence",
        "uncertain",
        "prob_hem",
        "prob_all",
    ]


def test_abstention_counts() -> None:
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.45, 0.55]])
    targets = np.array([0, 1, 1, 0])
    full = abstention(probs, targets, 0.0, ["hem", "all"])
    assert full["coverage"] == 1.0 and full["n_uncertain"] == 0
    assert full["accuracy_covered"] == full["accuracy_all"] == 0.5
    a = abstention(probs, targets, 0.7, ["hem", "all"])
    # Confidences 0.9, 0.6, 0.8, 0.55: two below 0.7 (true classes all and hem), both wrong.
    assert a["coverage"] == 0.5 and a["accuracy_covered"] == 1.0
    assert a["uncertain_by_true_class"] == {"hem": 1, "all": 1}
    assert a["uncertain_by_predicted_class"] == {"hem": 1, "all": 1}
    curve = coverage_curve(probs, targets, [0.0, 0.7, 0.95])
    assert [c["coverage"] for c in curve] == [1.0, 0.5, 0.0]
    assert curve[2]["accuracy"] is None


def test_last_conv_is_the_last_one_run() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Conv2d(8, 4, 1)  # declared first, run last
            self.stem = nn.Conv2d(3, 8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.stem(x)).mean(dim=(2, 3))

    name, layer = last_conv_layer(Net(), 16)
    assert name == "head" and isinstance(layer, nn.Conv2d)
    with pytest.raises(NoConvolutionError, match=r"no nn\.Conv2d"):
        last_conv_layer(nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2)), 16)


def test_missing_xgboost_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "xgboost", None)
    with pytest.raises(ImportError, match=r"pip install 'leuk\[xgboost\]'"):
        require_xgboost()


def test_training_curves_from_metrics_csv(tmp_path: Path) -> None:
    csv = tmp_path / "metrics.csv"
    pd.DataFrame(
        {
            "epoch": [0, 0, 0, 1, 1, 1],
            "step": [1, 1, 2, 3, 3, 4],
            "train/loss_step": [1.5, None, None, 1.1, None, None],
            "val/loss": [None, 1.4, None, None, 1.2, None],
            "val/accuracy": [None, 0.3, None, None, 0.5, None],
            "train/loss": [None, None, 1.45, None, None, 1.05],
            "train/accuracy": [None, None, 0.35, None, None, 0.6],
        }
    ).to_csv(csv, index=False)
    history = load_history(csv)
    assert history == [
        {"epoch": 0, "train/loss": 1.45, "val/loss": 1.4, "train/accuracy": 0.35, "val/accuracy": 0.3},
        {"epoch": 1, "train/loss": 1.05, "val/loss": 1.2, "train/accuracy": 0.6, "val/accuracy": 0.5},
    ]
    assert training_curves_plot(history, tmp_path / "curves.png").is_file()
