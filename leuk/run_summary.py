"""What a training run writes to ``metrics.json`` beyond the Trainer's own metrics."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.loggers import WandbLogger

from leuk.callbacks.last_checkpoint import LastEpochCheckpoint
from leuk.metrics import compute_metrics, is_confusion_key, mean_per_image
from leuk.robustness import flatten, noise_rows

log = logging.getLogger(__name__)


def stage_metrics(trainer: L.Trainer, stage: str) -> dict[str, float]:
    # Confusion cells are left out: the matrix is written whole.
    return {
        k: float(v)
        for k, v in trainer.callback_metrics.items()
        if k.startswith(f"{stage}/") and not is_confusion_key(k)
    }


def tested_checkpoint(trainer: L.Trainer, which: str, best: str) -> str:
    """The checkpoint to validate and test after fitting (``test_checkpoint``): ``best``, or
    ``last``, the weights after the last epoch; "" when there is no such file (the module then
    holds the last epoch's weights itself)."""
    if which == "last":
        last = next((cb for cb in trainer.callbacks if isinstance(cb, LastEpochCheckpoint)), None)
        return (last.best_model_path or "") if last is not None else ""
    return best


def image_metrics_on_test(outputs: dict[str, np.ndarray] | None, datamodule: Any) -> dict[str, float]:
    """With per-lesion patches (ALDL): the test metrics per image, an image's prediction being the
    mean of its patches' probabilities (``test_image/*``); {} for one sample per image, or where
    the test loop did not see every patch (fast_dev_run, limit_test_batches)."""
    owner = getattr(datamodule, "patch_owner", None)
    if owner is None or outputs is None:
        return {}
    test_set = datamodule.dataset("test")
    if len(outputs["targets"]) != len(test_set):
        return {}
    ids, probs = mean_per_image(outputs["probs"], owner[np.asarray(test_set.indices)[outputs["indices"]]])
    return compute_metrics(probs, datamodule.labels[ids], datamodule.class_names, prefix="test_image/")


def noise_metrics_on_test(
    module: L.LightningModule, datamodule: Any, sigmas: list[float], seed: int
) -> dict[str, float]:
    """The tested checkpoint's metrics on noisy copies of the test split, as ``noise/<σ>/<metric>``."""
    test_set = datamodule.dataset("test")
    images = np.stack([test_set.image(i) for i in range(len(test_set))])
    labels = test_set.labels[np.asarray(test_set.indices)]
    module.eval()
    rows = noise_rows(module, images, labels, datamodule.class_names, sigmas, datamodule.batch_size, seed)
    log.info("noise robustness (accuracy by σ): %s", {r["sigma"]: round(r["test/accuracy"], 4) for r in rows})
    return flatten(rows)


def update_wandb_summary(loggers: list[Any], metrics: dict[str, Any]) -> None:
    # Test metrics logged after the last training step otherwise show only as history, not in the
    # W&B runs table where sweeps are compared.
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update(numbers)


def artifact_metadata(trainer: L.Trainer, metrics: dict[str, Any]) -> dict[str, Any]:
    """What the W&B artifacts of a run say about it (shown beside them in the W&B UI)."""
    ckpt = trainer.checkpoint_callback
    score = getattr(ckpt, "best_model_score", None)
    return {
        "model": metrics.get("model"),
        "data": metrics.get("data"),
        "seed": metrics.get("seed"),
        "epochs_trained": metrics.get("epochs_trained"),
        "monitor": getattr(ckpt, "monitor", None),
        "best_score": float(score) if score is not None else None,
    }


def data_summary(datamodule: Any) -> dict[str, Any]:
    """The data side of ``metrics.json``."""
    s = datamodule.summary
    out = {
        "data": s["data_source"],
        "split": s["split_protocol"],
        "grouping": s["grouping"],
        "groups_merged": s["images_merged_into_groups"],
        # Subjects in two splits (null for a source without subject IDs): a C-NMC run under the
        # image-level protocol tests on cells of people it trained on.
        "subject_grouping": s["subject_grouping"],
        "n_subjects": s["n_subjects"],
        "subjects_shared": s["subjects_shared"],
        "bad_images_skipped": s["bad_images_skipped"],
        "non_image_files_ignored": s["non_image_files_ignored"],
        # What the source did not read (folders mapped to no class, loose files), blank images and
        # byte-identical images under two labels (kept only with data.allow_conflicting_labels).
        "unmapped_folders_ignored": s["unmapped_folders_ignored"],
        "unmapped_files_ignored": s["unmapped_files_ignored"],
        "blank_images": s["blank_images"],
        "conflicting_label_sets": s["conflicting_label_sets"],
        "preprocess": s["preprocess"],
        "preprocess_stats": s["preprocess_stats"],
        "balance": s["balance"],
        "train_copies_added": s["train_copies_added"],
        "class_counts": s["class_counts"],
        "image_size": datamodule.image_size,
    }
    return out
