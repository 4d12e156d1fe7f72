"""Training: ``python -m leuk.cli.train [group=option ...] [key=value ...]`` (or ``leuk.train``).

Build the run (``leuk.composition.build_run``), fit, validate and test the chosen checkpoint,
write ``metrics.json``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

import leuk  # noqa: F401  (registers the config resolvers before Hydra composes)
from leuk.checkpoints import check_checkpoint
from leuk.cli.errors import user_errors
from leuk.composition import build_run
from leuk.config import config_dir
from leuk.config.schema import validate_train_config
from leuk.config.validate import check_sigmas
from leuk.metrics import DEFINITIONS
from leuk.models.registry import check_weights_policy
from leuk.run_summary import (
    artifact_metadata,
    data_summary,
    image_metrics_on_test,
    noise_metrics_on_test,
    stage_metrics,
    tested_checkpoint,
    update_wandb_summary,
)
from leuk.tracking import leuk_wandb_loggers
from leuk.utils.report import print_config_tree, print_metric_table, write_json
from leuk.utils.run_folder import claim_run_folder
from leuk.utils.task import task_wrapper

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, then test the best (or, with ``test_checkpoint=last``, the last) checkpoint; return the
    values written to ``metrics.json``.

    The run folder is claimed first (``leuk.utils.run_folder``): one that another run is using, or
    that holds a finished run, is refused before anything is written there, ``failed.json``
    included; the claim ends with the run, failed or not."""
    out_dir = Path(cfg.paths.output_dir)
    overwrite, resume = cfg.get("overwrite") is True, bool(cfg.get("ckpt_path"))
    with claim_run_folder(out_dir, overwrite=overwrite, resume=resume):
        return _train(cfg, out_dir)


# The task name recorded in failed.json stays the documented command's (leuk.report reads it).
@task_wrapper(task="leuk.train.train")
def _train(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    # `plots` is new in issue 16 (until the schema lists it).
    validate_train_config(cfg)
    if cfg.train:
        # Before any image is decoded: weights that cannot be had, or frozen random weights.
        check_weights_policy(cfg.model, image_size=cfg.data.get("image_size"))
    if cfg.get("ckpt_path"):
        # Before any image is decoded too: a missing, damaged or other model's checkpoint.
        check_checkpoint(cfg.ckpt_path, cfg.model.name)
    if cfg.get("print_config"):
        print_config_tree(cfg)
    start = time.perf_counter()
    L.seed_everything(cfg.seed, workers=True)
    run = build_run(cfg)
    datamodule, module, trainer = run.datamodule, run.module, run.trainer

    if trainer.is_global_zero:
        out_dir.mkdir(parents=True, exist_ok=True)
        datamodule.split_frame().to_csv(out_dir / "split.csv", index=False)
        hparams = OmegaConf.to_container(cfg, resolve=True)
        hparams["data_summary"] = datamodule.summary
        for logger in run.loggers:
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
        metrics.update(stage_metrics(trainer, "val"))
    if cfg.test:
        if not tested and which == "best":
            log.warning(
                "no checkpoint to test (fast_dev_run or no checkpointing): testing the current weights"
            )
        trainer.test(module, datamodule=datamodule, ckpt_path=tested or None, verbose=False)
        metrics.update(stage_metrics(trainer, "test"))
        sigmas = check_sigmas(cfg.get("noise_sigmas"))
        # Rank 0 predicts the whole test split alone; its metrics gather nothing from the other
        # ranks (compute_metrics does not sync), which have left by then.
        if sigmas and trainer.is_global_zero:
            metrics.update(noise_metrics_on_test(module, datamodule, sigmas, cfg.seed))
        confusion = run.test_outputs.confusion_matrix or []
        metrics["test/confusion_matrix"] = confusion
        # The samples tested: images, or with ALDL's per-lesion patches the patches (as the paper
        # counts them); n_test_images counts the images they came from.
        metrics["n_test"] = int(sum(map(sum, confusion)))
        metrics["n_test_images"] = datamodule.summary["n_test"]
        metrics.update(image_metrics_on_test(run.test_outputs.outputs, datamodule))
        if trainer.is_global_zero:
            metrics["plots"] = run.test_outputs.plots

    metrics.update(
        {
            "model": cfg.model.name,
            **data_summary(datamodule),
            "seed": cfg.seed,
            "class_names": datamodule.class_names,
            "n_train": datamodule.summary["n_train"],
            "n_val": datamodule.summary["n_val"],
            "epochs_trained": trainer.current_epoch,
            "global_step": trainer.global_step,
            "best_checkpoint": best,
            "train_images_per_s": run.throughput.images_per_second,
            "wall_time_s": time.perf_counter() - start,
            "metric_definitions": DEFINITIONS,
        }
    )
    if "n_patches" in datamodule.summary:
        metrics["n_patches"] = datamodule.summary["n_patches"]
        metrics["patches_per_image"] = datamodule.summary["patches_per_image"]
    if trainer.is_global_zero:
        # The checkpoint this run trained (not one it was given to test with train=false).
        trained = best if cfg.train else ""
        wandb_loggers = leuk_wandb_loggers(run.loggers)
        if wandb_loggers:
            # Where leuk.eval finds the W&B run to log its evaluation beside.
            metrics["wandb"] = wandb_loggers[0].run_info(trained)
        write_json(out_dir / "metrics.json", metrics)
        update_wandb_summary(run.loggers, metrics)
        for logger in wandb_loggers:
            logger.log_run_artifacts(
                out_dir, OmegaConf.to_yaml(cfg, resolve=True), trained, artifact_metadata(trainer, metrics)
            )
        if cfg.test:
            print_metric_table(metrics)
        log.info("run folder: %s", out_dir)
    return metrics


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def main(cfg: DictConfig) -> float | None:
    with user_errors("leuk-train"):
        metrics = train(cfg)
    # The value an Optuna sweep optimizes (``optimized_metric: val/mcc`` etc.).
    key = cfg.get("optimized_metric")
    return float(metrics[key]) if key and metrics.get(key) is not None else None


if __name__ == "__main__":
    main()
