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
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

import leuk  # noqa: F401  (registers the config resolvers before Hydra composes)
from leuk.callbacks import ThroughputMeter
from leuk.config import config_dir
from leuk.config.schema import validate_train_config
from leuk.data.transforms import build_augmentation
from leuk.metrics import DEFINITIONS
from leuk.models.module import Classifier
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
    datamodule.train_transform = build_augmentation(cfg.augmentation.get("transforms"))
    return datamodule


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
        if cfg.scheduler.get("monitor", "").startswith("val/"):
            cfg.scheduler.monitor = "train/loss"


@task_wrapper
def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, then test the best checkpoint; return the values written to ``metrics.json``."""
    validate_train_config(cfg)
    if cfg.get("print_config"):
        print_config_tree(cfg)
    start = time.perf_counter()
    L.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)

    datamodule = build_datamodule(cfg)
    datamodule.setup()
    module = Classifier(
        model=cfg.model,
        loss=cfg.loss,
        optimizer=cfg.optimizer,
        scheduler=cfg.scheduler,
        num_classes=datamodule.num_classes,
        class_names=datamodule.class_names,
        image_size=datamodule.image_size,
        class_weights=datamodule.class_weights,
    )
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
    best = ""
    if cfg.test:
        if cfg.train:
            best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        else:
            best = cfg.get("ckpt_path") or ""
        if not best:
            log.warning(
                "no checkpoint to test (fast_dev_run or no checkpointing): testing the current weights"
            )
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
        confusion = module.test_confusion_matrix or []
        metrics["test/confusion_matrix"] = confusion
        metrics["n_test"] = int(sum(map(sum, confusion)))

    metrics.update(
        {
            "model": cfg.model.name,
            "data": datamodule.summary["data_source"],
            "split": datamodule.summary["split_protocol"],
            "grouping": datamodule.summary["grouping"],
            "groups_merged": datamodule.summary["images_merged_into_groups"],
            "bad_images_skipped": datamodule.summary["bad_images_skipped"],
            "non_image_files_ignored": datamodule.summary["non_image_files_ignored"],
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
    if trainer.is_global_zero:
        write_json(out_dir / "metrics.json", metrics)
        if cfg.test:
            print_metric_table(metrics)
        log.info("run folder: %s", out_dir)
    return metrics


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    # The value an Optuna sweep optimizes (``optimized_metric: test/mcc`` etc.).
    key = cfg.get("optimized_metric")
    return float(metrics[key]) if key and metrics.get(key) is not None else None


if __name__ == "__main__":
    main()
