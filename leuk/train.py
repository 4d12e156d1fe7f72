"""Train and test one model: ``python -m leuk.train [group=option ...] [key=value ...]``.

``-m`` runs a Hydra multirun over any comma-separated overrides (``-m seed=1,2,3``); every job
writes its own run folder under ``multirun/``.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf, open_dict

import leuk  # noqa: F401  (registers the config resolvers before Hydra composes)
from leuk.callbacks import ThroughputMeter
from leuk.config import config_dir
from leuk.config.schema import validate_train_config
from leuk.config.validate import check_sigmas
from leuk.data.transforms import build_augmentation
from leuk.metrics import DEFINITIONS, compute_metrics, is_confusion_key
from leuk.models.module import Classifier
from leuk.models.registry import check_weights_policy
from leuk.plots import load_history, write_test_plots
from leuk.preprocess.pipeline import build_preprocess
from leuk.robustness import flatten, noise_rows
from leuk.utils.instantiate import instantiate_callbacks, instantiate_loggers
from leuk.utils.report import print_config_tree, print_metric_table, write_json
from leuk.utils.task import task_wrapper

log = logging.getLogger(__name__)

# Lightning notes that the module's on_after_batch_transfer is used rather than the DataModule's:
# that is the design (device-side normalization belongs to the model), not a mistake.
warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer`.*")


class CheckpointMismatchError(ValueError):
    """A checkpoint of one model given to a run of another."""


def check_checkpoint(ckpt_path: str, model_name: str) -> None:
    """Refuse a checkpoint that is missing or belongs to another architecture, naming both."""
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path: no such checkpoint '{path}'")
    ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    saved = ckpt.get("leuk_model_name") or ckpt.get("hyper_parameters", {}).get("model", {}).get("name")
    if saved is None:
        raise CheckpointMismatchError(f"ckpt_path: '{path}' is not a leuk checkpoint (no model name in it)")
    if saved != model_name:
        raise CheckpointMismatchError(
            f"ckpt_path: '{path}' holds a '{saved}' model, but this run builds model '{model_name}'; "
            f"run with model={saved} or pick a checkpoint of {model_name}"
        )


def build_datamodule(cfg: DictConfig) -> Any:
    """The DataModule of ``cfg.data`` with the run's seed and training augmentation."""
    datamodule = instantiate(cfg.data, seed=cfg.seed)
    datamodule.train_transform = build_augmentation(cfg.augmentation.get("transforms"), seed=cfg.seed)
    datamodule.preprocess = build_preprocess(cfg.preprocess.get("steps"))
    return datamodule


def build_classifier(cfg: DictConfig, datamodule: Any) -> Classifier:
    """The LightningModule for ``cfg``, sized by the set-up ``datamodule`` (classes, input size,
    class weights when ``data.balance=class_weights``)."""
    return Classifier(
        model=cfg.model,
        loss=cfg.loss,
        optimizer=cfg.optimizer,
        scheduler=cfg.scheduler,
        num_classes=datamodule.num_classes,
        class_names=datamodule.class_names,
        image_size=datamodule.image_size,
        class_weights=datamodule.class_weights,
        preprocess_steps=cfg.preprocess.get("steps"),
    )


def _without_validation(cfg: DictConfig) -> None:
    """A protocol with no validation part (data.split.val=0) keeps the last epoch's weights."""
    log.warning(
        "the split has no validation part: checkpoints keep the last epoch, early stopping is off, "
        "and schedulers monitor the training loss"
    )
    with open_dict(cfg):
        callbacks = cfg.get("callbacks") or {}
        if callbacks.get("model_checkpoint"):
            callbacks.model_checkpoint.monitor = None
            callbacks.model_checkpoint.save_top_k = 1
        if callbacks.get("early_stopping"):
            callbacks.early_stopping = None
    schedule_on_training_loss(cfg)


def schedule_on_training_loss(cfg: DictConfig) -> None:
    """Where nothing is validated, a scheduler watching a ``val/`` metric (a plateau scheduler)
    watches the training loss instead; Lightning would stop at the first epoch end otherwise."""
    if str(cfg.scheduler.get("monitor", "")).startswith("val/"):
        with open_dict(cfg):
            cfg.scheduler.monitor = "train/loss"


def write_run_plots(out_dir: Path, module: Classifier, datamodule: Any, loggers: list[Any]) -> dict[str, str]:
    """The test figures and training curves under ``<run>/plots/``, also sent to W&B when it logs.

    The curves come from the CSV logger's ``metrics.csv`` where there is one (it spans a resumed
    run's earlier epochs too), else from the epochs the module recorded in this process.
    """
    outputs = module.test_outputs
    if outputs is None or not len(outputs["targets"]):
        return {}
    csv = next((lg for lg in loggers if isinstance(lg, CSVLogger)), None)
    metrics_csv = Path(csv.experiment.metrics_file_path) if csv is not None else None
    history = load_history(metrics_csv) if metrics_csv and metrics_csv.is_file() else module.history
    test_set = datamodule.dataset("test")
    plots = write_test_plots(out_dir / "plots", outputs, datamodule.class_names, test_set.image, history)
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            for name, path in plots.items():
                logger.log_image(key=f"plots/{name}", images=[str(path)])
    return {name: str(path.relative_to(out_dir)) for name, path in plots.items()}


def _stage_metrics(trainer: L.Trainer, stage: str) -> dict[str, float]:
    # Confusion cells are left out: the matrix is written whole.
    return {
        k: float(v)
        for k, v in trainer.callback_metrics.items()
        if k.startswith(f"{stage}/") and not is_confusion_key(k)
    }


def image_metrics_on_test(module: Classifier, datamodule: Any) -> dict[str, float]:
    """With per-lesion patches (ALDL): the test metrics per image, an image's prediction being the
    mean of its patches' probabilities (``test_image/*``); {} for one sample per image, or where
    the test loop did not see every patch (fast_dev_run, limit_test_batches)."""
    owner = getattr(datamodule, "patch_owner", None)
    outputs = module.test_outputs
    if owner is None or outputs is None:
        return {}
    test_set = datamodule.dataset("test")
    if len(outputs["targets"]) != len(test_set):
        return {}
    images = owner[np.asarray(test_set.indices)[outputs["indices"]]]
    ids, inverse = np.unique(images, return_inverse=True)
    probs = np.zeros((len(ids), outputs["probs"].shape[1]), np.float64)
    np.add.at(probs, inverse, outputs["probs"])
    probs /= np.bincount(inverse)[:, None]
    return compute_metrics(probs, datamodule.labels[ids], datamodule.class_names, prefix="test_image/")


def noise_metrics_on_test(
    module: Classifier, datamodule: Any, sigmas: list[float], seed: int
) -> dict[str, float]:
    """The tested checkpoint's metrics on noisy copies of the test split, as ``noise/<σ>/<metric>``."""
    test_set = datamodule.dataset("test")
    images = np.stack([test_set.image(i) for i in range(len(test_set))])
    labels = test_set.labels[np.asarray(test_set.indices)]
    module.eval()
    rows = noise_rows(module, images, labels, datamodule.class_names, sigmas, datamodule.batch_size, seed)
    log.info("noise robustness (accuracy by σ): %s", {r["sigma"]: round(r["test/accuracy"], 4) for r in rows})
    return flatten(rows)


def _update_wandb_summary(loggers: list[Any], metrics: dict[str, Any]) -> None:
    # Test metrics logged after the last training step otherwise show only as history, not in the
    # W&B runs table where sweeps are compared.
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update(numbers)


def tested_checkpoint(trainer: L.Trainer, which: str, best: str) -> str:
    """The checkpoint to validate and test after fitting (``test_checkpoint``): ``best``, or
    ``last``, the weights after the last epoch; "" when there is no such file (the module then
    holds the last epoch's weights itself)."""
    if which == "last":
        callback = trainer.checkpoint_callback
        return (getattr(callback, "last_model_path", "") or "") if callback else ""
    return best


@task_wrapper
def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, then test the best (or, with ``test_checkpoint=last``, the last) checkpoint; return the
    values written to ``metrics.json``."""
    validate_train_config(cfg)
    if cfg.train:
        # Before any image is decoded: weights that cannot be had, or frozen random weights.
        check_weights_policy(cfg.model, image_size=cfg.data.get("image_size"))
    if cfg.get("print_config"):
        print_config_tree(cfg)
    start = time.perf_counter()
    L.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)

    datamodule = build_datamodule(cfg)
    datamodule.setup()
    module = build_classifier(cfg, datamodule)
    if cfg.get("ckpt_path"):
        check_checkpoint(cfg.ckpt_path, cfg.model.name)

    if not datamodule.has_val:
        _without_validation(cfg)
    loggers = instantiate_loggers(cfg.get("logger"))
    meter = ThroughputMeter()
    configured = instantiate_callbacks(
        cfg.get("callbacks"),
        have_logger=bool(loggers),
        progress_bar=cfg.trainer.get("enable_progress_bar", True),
    )
    callbacks = [*configured, meter]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    if trainer.is_global_zero:
        out_dir.mkdir(parents=True, exist_ok=True)
        datamodule.split_frame().to_csv(out_dir / "split.csv", index=False)
        hparams = OmegaConf.to_container(cfg, resolve=True)
        hparams["data_summary"] = datamodule.summary
        for logger in loggers:
            logger.log_hyperparams(hparams)

    if cfg.train:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

    metrics: dict[str, Any] = {}
    which = cfg.get("test_checkpoint", "best")
    if cfg.train:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        tested = tested_checkpoint(trainer, which, best)
    else:
        best = tested = cfg.get("ckpt_path") or ""
    metrics.update({"test_checkpoint": which, "tested_checkpoint": tested})
    if cfg.train and datamodule.has_val and not trainer.fast_dev_run:
        # The tested checkpoint's validation metrics: what a sweep may select on (test/* must
        # stay untouched by model selection).
        trainer.validate(module, datamodule=datamodule, ckpt_path=tested or None, verbose=False)
        metrics.update(_stage_metrics(trainer, "val"))
    if cfg.test:
        if not tested and which == "best":
            log.warning(
                "no checkpoint to test (fast_dev_run or no checkpointing): testing the current weights"
            )
        trainer.test(module, datamodule=datamodule, ckpt_path=tested or None, verbose=False)
        metrics.update(_stage_metrics(trainer, "test"))
        sigmas = check_sigmas(cfg.get("noise_sigmas"))
        # Rank 0 predicts the whole test split alone; its metrics gather nothing from the other
        # ranks (compute_metrics does not sync), which have left by then.
        if sigmas and trainer.is_global_zero:
            metrics.update(noise_metrics_on_test(module, datamodule, sigmas, cfg.seed))
        confusion = module.test_confusion_matrix or []
        metrics["test/confusion_matrix"] = confusion
        # The samples tested: images, or with ALDL's per-lesion patches the patches (as the paper
        # counts them); n_test_images counts the images they came from.
        metrics["n_test"] = int(sum(map(sum, confusion)))
        metrics["n_test_images"] = datamodule.summary["n_test"]
        metrics.update(image_metrics_on_test(module, datamodule))
        if trainer.is_global_zero:
            metrics["plots"] = write_run_plots(out_dir, module, datamodule, loggers)

    metrics.update(
        {
            "model": cfg.model.name,
            "data": datamodule.summary["data_source"],
            "split": datamodule.summary["split_protocol"],
            "grouping": datamodule.summary["grouping"],
            "groups_merged": datamodule.summary["images_merged_into_groups"],
            # Subjects in two splits (null for a source without subject IDs): a C-NMC run under
            # the image-level protocol tests on cells of people it trained on.
            "subject_grouping": datamodule.summary["subject_grouping"],
            "n_subjects": datamodule.summary["n_subjects"],
            "subjects_shared": datamodule.summary["subjects_shared"],
            "bad_images_skipped": datamodule.summary["bad_images_skipped"],
            "non_image_files_ignored": datamodule.summary["non_image_files_ignored"],
            "preprocess": datamodule.summary["preprocess"],
            "preprocess_stats": datamodule.summary["preprocess_stats"],
            "balance": datamodule.summary["balance"],
            "train_copies_added": datamodule.summary["train_copies_added"],
            "class_counts": datamodule.summary["class_counts"],
            "image_size": datamodule.image_size,
            "seed": cfg.seed,
            "class_names": datamodule.class_names,
            "n_train": datamodule.summary["n_train"],
            "n_val": datamodule.summary["n_val"],
            "epochs_trained": trainer.current_epoch,
            "global_step": trainer.global_step,
            "best_checkpoint": best,
            "train_images_per_s": meter.images_per_second,
            "wall_time_s": time.perf_counter() - start,
            "metric_definitions": DEFINITIONS,
        }
    )
    if "n_patches" in datamodule.summary:
        metrics["n_patches"] = datamodule.summary["n_patches"]
        metrics["patches_per_image"] = datamodule.summary["patches_per_image"]
    if trainer.is_global_zero:
        write_json(out_dir / "metrics.json", metrics)
        _update_wandb_summary(loggers, metrics)
        if cfg.test:
            print_metric_table(metrics)
        log.info("run folder: %s", out_dir)
    return metrics


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    # The value an Optuna sweep optimizes (``optimized_metric: val/mcc`` etc.).
    key = cfg.get("optimized_metric")
    return float(metrics[key]) if key and metrics.get(key) is not None else None


if __name__ == "__main__":
    main()
