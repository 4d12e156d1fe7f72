"""Evaluate a checkpoint: ``python -m leuk.cli.eval ckpt_path=<run>/checkpoints/<x>.ckpt [data=...]``
(or ``leuk.eval``).

On the run's own test split (its ``split.csv``) or on every image of a data set's folder: the test
metrics, their robustness to Gaussian noise, abstention below a confidence threshold, inference
latency, optionally the hybrid XGBoost classifier and Grad-CAM heat maps. Every prediction goes
through ``trainer.predict`` (``leuk.predictions``). Writes ``eval.json``, ``predictions.csv`` and
``plots/`` into the evaluation's own run folder, and, when the training run logged to W&B, logs them
as an ``eval`` run beside it (``leuk.tracking``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

import leuk  # noqa: F401  (registers the config resolvers before Hydra composes)
from leuk.abstention import abstention, coverage_curve
from leuk.calibration import calibration_report, reliability_bins
from leuk.checkpoints import CheckpointError, TrainedModel, load_trained
from leuk.cli.errors import user_errors
from leuk.config import config_dir
from leuk.config.schema import validate_eval_config
from leuk.data.decode import BadImagesError
from leuk.data.prediction import PredictionDataModule
from leuk.data.sources import DataError
from leuk.latency import measure_inference
from leuk.metrics import DEFINITIONS, compute_metrics, confusion_matrix, mean_per_image
from leuk.plots import (
    confusion_matrix_plot,
    coverage_plot,
    misclassified_plot,
    noise_plot,
    reliability_plot,
    roc_plot,
)
from leuk.predictions import (
    PenultimateFeatures,
    check_run_images,
    describe_preprocess,
    device_name,
    load_split,
    predict_probs,
    prediction_trainer,
    predictions_table,
    preprocess_for_run,
    resolve_device,
    run_dir_of,
)
from leuk.robustness import noise_rows, shift_rows
from leuk.shifts import chosen_shifts
from leuk.tracking import log_evaluation, recorded_wandb_run, run_info, start_eval_run
from leuk.utils.report import print_config_tree, print_metric_table, write_json
from leuk.utils.task import task_wrapper

log = logging.getLogger(__name__)

# The metrics of the noise table and figure.
NOISE_KEYS = ("accuracy", "balanced_accuracy", "f1", "mcc", "auroc")


def _check_extras(cfg: DictConfig) -> None:
    """Missing optional packages stop the evaluation at start, not after the slow parts."""
    if cfg.xgboost:
        from leuk.hybrid import require_xgboost

        require_xgboost()
    if cfg.gradcam:
        from leuk.explain import require_grad_cam

        require_grad_cam()


@dataclass
class EvalSet:
    """The images to evaluate: paths, labels in the checkpoint's class order, where they came from."""

    paths: list[str]
    labels: np.ndarray
    description: str


def _from_split(split: pd.DataFrame | None, part: str, run_dir: Path, class_names: list[str]) -> EvalSet:
    if split is None:
        raise DataError(
            f"no split.csv in the checkpoint's run folder {run_dir}: evaluate a data set's folder instead "
            "(data=folder data.root=/path/to/class/folders)"
        )
    rows = split[split["split"] == part]
    check_run_images(rows["path"].tolist(), run_dir, f"evaluating the {part} split")
    for label, name in zip(rows["label"], rows["class_name"], strict=True):
        if not 0 <= label < len(class_names) or class_names[label] != name:
            raise CheckpointError(
                f"split.csv of {run_dir} names class {label} '{name}', the checkpoint {class_names}: "
                "the checkpoint is not this run's"
            )
    return EvalSet(
        rows["path"].tolist(), rows["label"].to_numpy(np.int64), f"{part} split of {run_dir / 'split.csv'}"
    )


def _from_data(data: DictConfig, class_names: list[str]) -> EvalSet:
    # data.source builds the source from data.root, as the training DataModule calls it.
    scan = instantiate(data.source)(root=data.get("root")).scan()
    unknown = [c for c in scan.class_names if c not in class_names]
    if unknown:
        raise DataError(
            f"the data set's classes {scan.class_names} include {unknown}, which the checkpoint does "
            f"not know (its classes: {class_names}); use the data config that names the folders as in "
            "training (e.g. data=all), or data.source.classes"
        )
    labels = np.array([class_names.index(scan.class_names[r.label]) for r in scan.records], np.int64)
    return EvalSet([r.path for r in scan.records], labels, scan.description)


def _decoded(
    eval_set: EvalSet, trained: TrainedModel, preprocess: Any, batch_size: int
) -> PredictionDataModule:
    """The set's images, decoded once; an unreadable one stops the evaluation (metrics need them all)."""
    datamodule = PredictionDataModule(
        eval_set.paths,
        trained.image_size,
        labels=eval_set.labels,
        preprocess=preprocess,
        batch_size=batch_size,
    )
    datamodule.setup()
    if datamodule.bad:
        raise BadImagesError(datamodule.bad)
    return datamodule


def _xgboost(
    trained: TrainedModel,
    trainer: L.Trainer,
    split: pd.DataFrame | None,
    test: PredictionDataModule,
    preprocess: Any,
    cfg: DictConfig,
    run_dir: Path,
) -> dict[str, Any]:
    from leuk.hybrid import xgboost_report

    if split is None:
        raise DataError(f"xgboost=true fits on the run's training split, but {run_dir} has no split.csv")
    extractor = PenultimateFeatures(trained.net, trained.model_name)
    features: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for part in ("train", "val"):
        part_set = _from_split(split, part, run_dir, trained.class_names)
        if not part_set.paths:
            continue
        images = _decoded(part_set, trained, preprocess, cfg.batch_size)
        features[part] = (predict_probs(trainer, extractor, images), part_set.labels)
    if "train" not in features:
        raise DataError(f"xgboost=true: the run's split.csv ({run_dir}) has no training images")
    features["test"] = (predict_probs(trainer, extractor, test), test.labels)
    return xgboost_report(features, trained.class_names, OmegaConf.to_container(cfg.xgboost_params), cfg.seed)


def _calibration(
    cfg: DictConfig,
    trained: TrainedModel,
    trainer: L.Trainer,
    split: pd.DataFrame | None,
    run_dir: Path,
    preprocess: Any,
    probs: np.ndarray,
    targets: np.ndarray,
) -> dict[str, Any]:
    """ECE before and after temperature scaling fitted on the run's validation split (never on the
    evaluated images), the reliability bins, and the abstention on the calibrated probabilities."""
    from leuk.calibration import apply_temperature

    val_probs = val_labels = None
    if split is not None and (split["split"] == "val").any():
        val_set = _from_split(split, "val", run_dir, trained.class_names)
        val = _decoded(val_set, trained, preprocess, cfg.batch_size)
        val_probs, val_labels = predict_probs(trainer, trained.module, val), val.labels
    c = cfg.calibration
    bounds = (float(c.temperature_bounds[0]), float(c.temperature_bounds[1]))
    report: dict[str, Any] = calibration_report(val_probs, val_labels, probs, targets, c.n_bins, bounds)
    bins = reliability_bins(probs, targets, c.n_bins)
    report["reliability"] = {
        "edges": bins.edges.tolist(),
        "counts": bins.counts.tolist(),
        "confidence": [None if np.isnan(v) else float(v) for v in bins.confidence],
        "accuracy": [None if np.isnan(v) else float(v) for v in bins.accuracy],
    }
    if report["temperature"] is not None:
        scaled = apply_temperature(probs, report["temperature"])
        report["abstention_scaled"] = abstention(scaled, targets, cfg.abstain_threshold, trained.class_names)
    else:
        log.warning("calibration: the run has no validation split; ECE is reported without scaling")
    return report


def _print_summary(result: dict[str, Any], prefix: str) -> None:
    print_metric_table(result["metrics"], prefix=prefix, title=f"{prefix.rstrip('/')} metrics")
    table = Table(title="Gaussian noise (0–255 scale)")
    table.add_column("σ", justify="right")
    for key in NOISE_KEYS:
        table.add_column(key, justify="right")
    for row in result["noise"]:
        table.add_row(f"{row['sigma']:g}", *(f"{row.get(prefix + k, float('nan')):.4f}" for k in NOISE_KEYS))
    Console().print(table)
    a = result["abstention"]
    covered = "n/a" if a["accuracy_covered"] is None else f"{a['accuracy_covered']:.4f}"
    Console().print(
        f"abstention at {a['threshold']:g}: coverage {a['coverage']:.3f}, accuracy on covered {covered}, "
        f"{a['n_uncertain']} uncertain"
    )


def plain_config(cfg: DictConfig) -> dict[str, Any]:
    """The evaluation's settings as plain values (for the W&B run's config)."""
    return {str(k): v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "hydra"}


@task_wrapper
def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run the evaluation ``cfg`` asks for; return what is written to ``eval.json``."""
    validate_eval_config(cfg)
    shifts = chosen_shifts(cfg.shifts, cfg.shift_strengths)
    _check_extras(cfg)
    if cfg.get("print_config"):
        print_config_tree(cfg)
    start = time.perf_counter()
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots_dir = out_dir / "plots"
    device = resolve_device(cfg.device)
    trained = load_trained(cfg.ckpt_path)
    class_names, size = trained.class_names, trained.image_size
    run_dir = run_dir_of(cfg.ckpt_path)
    split = load_split(run_dir)
    data = cfg.get("data")
    eval_set = (
        _from_data(data, class_names)
        if data is not None
        else _from_split(split, cfg.split, run_dir, class_names)
    )
    if not eval_set.paths:
        raise DataError(f"nothing to evaluate in the {eval_set.description}")
    prefix = "test/" if data is not None else f"{cfg.split}/"
    preprocess = preprocess_for_run(run_dir, split, trained.preprocess_steps)
    test = _decoded(eval_set, trained, preprocess, cfg.batch_size)
    log.info("evaluating %d images of the %s on %s", len(test.labels), eval_set.description, device)

    trainer = prediction_trainer(device)
    sample_probs = predict_probs(trainer, trained.module, test, per_sample=True)
    # Per-lesion patches (ALDL): an image is scored as the mean of its patches, as training's
    # test_image/* is; the patch-level figures (training's test/*) are kept under <split>_patch/.
    probs = sample_probs if test.owner is None else mean_per_image(sample_probs, test.owner)[1]
    targets = test.labels
    pictures = test.pictures
    matrix = confusion_matrix(probs, targets, len(class_names))
    result: dict[str, Any] = {
        "checkpoint": str(Path(cfg.ckpt_path).expanduser().resolve()),
        "run_dir": str(run_dir),
        "model": trained.model_name,
        "class_names": class_names,
        "image_size": size,
        "data": eval_set.description,
        # Another folder than the run's own split: an external test set, labelled so in the report.
        "external": data is not None,
        "n_images": len(targets),
        **({} if test.owner is None else {"n_patches": len(test.owner)}),
        "preprocess": describe_preprocess(preprocess),
        "device": device_name(device),
        "metrics": {
            **compute_metrics(probs, targets, class_names, prefix=prefix),
            f"{prefix}confusion_matrix": matrix,
        },
    }
    if test.owner is not None:
        result["metrics"].update(
            compute_metrics(sample_probs, test.sample_labels, class_names, prefix=prefix[:-1] + "_patch/")
        )
    predictions_table(test.paths, probs, class_names, cfg.abstain_threshold, targets).to_csv(
        out_dir / "predictions.csv", index=False
    )
    sigmas = [float(s) for s in cfg.noise_sigmas]
    result["noise"] = noise_rows(
        trained.module, test, targets, class_names, sigmas, cfg.batch_size, cfg.seed, prefix, trainer
    )
    result["noise_seed"] = cfg.seed
    result["shift"] = shift_rows(
        trained.module, test, class_names, shifts, cfg.seed, cfg.abstain_threshold, prefix, trainer
    )
    result["calibration"] = _calibration(cfg, trained, trainer, split, run_dir, preprocess, probs, targets)
    result["abstention"] = {
        **abstention(probs, targets, cfg.abstain_threshold, class_names),
        "curve": coverage_curve(probs, targets),
    }
    plots = {
        "confusion_matrix": confusion_matrix_plot(matrix, class_names, plots_dir / "confusion_matrix.png"),
        "roc": roc_plot(probs, targets, class_names, plots_dir / "roc.png", title="ROC (one-vs-rest)"),
        "misclassified": misclassified_plot(
            probs,
            targets,
            np.arange(len(targets)),
            lambda i: pictures[i],
            class_names,
            plots_dir / "misclassified.png",
            cfg.misclassified_max,
        ),
        "noise": noise_plot(result["noise"], plots_dir / "noise.png", [prefix + k for k in NOISE_KEYS]),
        "coverage": coverage_plot(
            result["abstention"]["curve"], cfg.abstain_threshold, plots_dir / "coverage.png"
        ),
        "reliability": reliability_plot(result["calibration"], plots_dir / "reliability.png"),
    }
    if cfg.latency:
        result["latency"] = {
            "device": result["device"],
            "batch_size": int(cfg.latency_batch_size),
            "threads": torch.get_num_threads(),
            **measure_inference(
                trained.net,
                device,
                size,
                warmup=cfg.latency_warmup,
                iters=cfg.latency_iters,
                batch_size=cfg.latency_batch_size,
            ),
        }
    if cfg.xgboost:
        result["xgboost"] = _xgboost(trained, trainer, split, test, preprocess, cfg, run_dir)
    if cfg.gradcam:
        from leuk.explain import gradcam_grid

        result["gradcam"] = gradcam_grid(
            trained.net.to(device),
            pictures,
            targets,
            probs,
            class_names,
            cfg.gradcam_per_class,
            plots_dir / "gradcam.png",
        )
        plots["gradcam"] = plots_dir / "gradcam.png"
    result["plots"] = {name: str(path.relative_to(out_dir)) for name, path in plots.items()}
    result["wall_time_s"] = time.perf_counter() - start
    result["metric_definitions"] = DEFINITIONS
    train_run = recorded_wandb_run(run_dir)
    wandb_run = start_eval_run(
        OmegaConf.to_container(cfg.wandb, resolve=True),
        train_run,
        out_dir,
        trained.model_name,
        {"checkpoint": result["checkpoint"], "data": eval_set.description, "eval": plain_config(cfg)},
    )
    if wandb_run is not None:
        result["wandb"] = {**run_info(wandb_run), "train_run_id": (train_run or {}).get("id")}
    write_json(out_dir / "eval.json", result)
    if wandb_run is not None:
        log_evaluation(
            wandb_run,
            result,
            prefix,
            probs,
            targets,
            test.paths,
            lambda i: pictures[i],
            cfg.misclassified_max,
            out_dir,
        )
    _print_summary(result, prefix)
    log.info("evaluation folder: %s", out_dir)
    return result


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="eval")
def main(cfg: DictConfig) -> None:
    with user_errors("leuk-eval"):
        evaluate(cfg)


if __name__ == "__main__":
    main()
