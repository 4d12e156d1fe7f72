"""``leuk.predict`` on files and folders, unreadable files, and the run's preprocessing."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from leuk.callbacks import TestOutputs as KeptTestOutputs
from leuk.checkpoints import load_trained
from leuk.cli.eval import evaluate
from leuk.cli.predict import predict
from leuk.composition import build_datamodule
from leuk.data.prediction import PredictionDataModule
from leuk.data.sources import DataError
from leuk.predictions import predict_probs, prediction_trainer
from leuk.predictions import run_preprocess as _preprocess_for
from tests.helpers import TINY, compose_config
from tests.tiny_run import tiny_run


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("runs"))


def checkpoint(run: Path) -> str:
    return json.loads((run / "metrics.json").read_text())["best_checkpoint"]


def test_predict_folder_lists_the_corrupt_file(run_dir: Path, tmp_path: Path) -> None:
    """A folder of the run's test images (one nested), a corrupt image and a text file: the corrupt
    file is listed, the text file ignored, and each image gets the probabilities that Lightning's
    test loop gives it (decoding, resizing and normalization as in training)."""
    split = pd.read_csv(run_dir / "split.csv")
    test_paths = split.loc[split["split"] == "test", "path"].tolist()
    folder = tmp_path / "in"
    (folder / "nested").mkdir(parents=True)
    copies = {}
    for i, src in enumerate(test_paths):
        dest = folder / ("nested" if i == 0 else "") / f"cell_{i}{Path(src).suffix}"
        shutil.copy(src, dest)
        copies[str(dest.resolve())] = i
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("not an image")

    out = tmp_path / "out"
    summary = predict(compose_config([f"ckpt_path={checkpoint(run_dir)}", f"input={folder}"], out, "predict"))
    assert [u["path"] for u in summary["unreadable"]] == [str((folder / "corrupt.png").resolve())]
    assert summary["n_predicted"] == len(test_paths)
    frame = pd.read_csv(out / "predictions.csv")
    assert len(frame) == len(test_paths)
    assert pd.read_csv(out / "unreadable.csv")["path"].tolist() == [str((folder / "corrupt.png").resolve())]

    # The same checkpoint through the Lightning test loop on the run's own test split.
    cfg = compose_config([*TINY, "logger=none"], output_dir=tmp_path / "check")
    datamodule = build_datamodule(cfg)
    trained = load_trained(checkpoint(run_dir))
    kept = KeptTestOutputs(tmp_path / "check", write_plots=False)
    L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[kept],
    ).test(trained.module, datamodule=datamodule, verbose=False)
    outputs = kept.outputs
    assert outputs is not None
    names = trained.class_names
    probs = frame[[f"prob_{n}" for n in names]].to_numpy()
    order = [copies[p] for p in frame["path"]]
    np.testing.assert_allclose(probs, outputs["probs"][np.argsort(outputs["indices"])][order], atol=1e-5)
    assert frame["predicted_class"].tolist() == [names[k] for k in probs.argmax(axis=1)]
    assert (frame["uncertain"] == (frame["confidence"] < 0.7)).all()


def test_predict_single_file_with_zero_threshold(run_dir: Path, tmp_path: Path) -> None:
    image = pd.read_csv(run_dir / "split.csv")["path"][0]
    overrides = [f"ckpt_path={checkpoint(run_dir)}", f"input={image}", "abstain_threshold=0"]
    summary = predict(compose_config(overrides, tmp_path, "predict"))
    frame = pd.read_csv(tmp_path / "predictions.csv")
    assert summary["n_predicted"] == 1 and summary["n_uncertain"] == 0 and not summary["unreadable"]
    assert frame["path"].tolist() == [str(Path(image).resolve())]
    assert frame.filter(like="prob_").sum(axis=1).iloc[0] == pytest.approx(1.0, abs=1e-5)


def test_predict_applies_the_runs_preprocessing(run_dir: Path, tmp_path: Path) -> None:
    """A run folder whose .hydra/config.yaml names a preprocess step: prediction goes through it."""
    assert _preprocess_for(None) is None
    assert _preprocess_for(OmegaConf.create({"preprocess": {"steps": []}})) is None
    steps = [{"_target_": "leuk.preprocess.clahe.Clahe", "clip_limit": 4.0}]
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create({"preprocess": {"steps": steps}}), run / ".hydra" / "config.yaml")
    shutil.copy(checkpoint(run_dir), run / "checkpoints" / "best.ckpt")
    assert len(_preprocess_for(OmegaConf.load(run / ".hydra" / "config.yaml"))) == 1
    # Without a Hydra config the checkpoint's saved steps stand in; the config wins where both are.
    assert len(_preprocess_for(None, steps)) == 1
    assert _preprocess_for(OmegaConf.create({"preprocess": {"steps": []}}), steps) is None

    image = pd.read_csv(run_dir / "split.csv")["path"][0]
    with_step = predict(
        compose_config(
            [f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}", f"input={image}"], tmp_path / "a", "predict"
        )
    )
    without = predict(
        compose_config([f"ckpt_path={checkpoint(run_dir)}", f"input={image}"], tmp_path / "b", "predict")
    )
    assert "clahe" in with_step["preprocess"] and without["preprocess"] == "none"
    a = pd.read_csv(tmp_path / "a" / "predictions.csv").filter(like="prob_").to_numpy()
    b = pd.read_csv(tmp_path / "b" / "predictions.csv").filter(like="prob_").to_numpy()
    assert not np.allclose(a, b, atol=1e-7)


def test_eval_and_predict_give_the_same_probabilities(run_dir: Path, tmp_path: Path) -> None:
    """One inference path: an image's probabilities in eval's and predict's predictions.csv are those
    of trainer.predict on a PredictionDataModule of that image."""
    split = pd.read_csv(run_dir / "split.csv")
    image = str(Path(split.loc[split["split"] == "test", "path"].iloc[0]).resolve())
    predict(compose_config([f"ckpt_path={checkpoint(run_dir)}", f"input={image}"], tmp_path / "p", "predict"))
    evaluate(
        compose_config(
            [f"ckpt_path={checkpoint(run_dir)}", "noise_sigmas=[0]", "latency=false"], tmp_path / "e", "eval"
        )
    )
    trained = load_trained(checkpoint(run_dir))
    columns = [f"prob_{n}" for n in trained.class_names]
    predicted = pd.read_csv(tmp_path / "p" / "predictions.csv")[columns].to_numpy()
    evaluated = pd.read_csv(tmp_path / "e" / "predictions.csv")
    evaluated = evaluated.loc[evaluated["path"].map(lambda p: str(Path(p).resolve())) == image, columns]
    direct = predict_probs(
        prediction_trainer(torch.device("cpu")),
        trained.module,
        PredictionDataModule([image], trained.image_size),
    )
    assert direct.shape == (1, len(columns))
    np.testing.assert_allclose(predicted, direct, atol=1e-6)
    np.testing.assert_allclose(evaluated.to_numpy(), direct, atol=1e-6)


def test_predict_fails_when_no_input_can_be_read(run_dir: Path, tmp_path: Path) -> None:
    """A corrupt image and a broken link: both listed (unreadable.csv), and the command fails
    rather than writing an empty predictions table."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    os.symlink(tmp_path / "moved_away.png", folder / "gone.png")
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"none of the 2 image file\(s\)") as err:
        predict(compose_config([f"ckpt_path={checkpoint(run_dir)}", f"input={folder}"], out, "predict"))
    assert "broken symbolic link" in str(err.value)
    listed = pd.read_csv(out / "unreadable.csv")["path"].tolist()
    assert listed == [str((folder / "corrupt.png").resolve()), str(folder.resolve() / "gone.png")]
    assert not (out / "predictions.csv").exists()
    # A user error: the command exits with status 1 (leuk.cli.errors), and no failed.json records
    # it as a failed run.
    assert err.value.exit_code == 1
    assert not (out / "failed.json").exists()
