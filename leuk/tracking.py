"""Weights & Biases, as its users expect it.

- ``WandbLogger`` (``conf/logger/wandb.yaml``): Lightning's logger, plus what a leuk run sends:
  per-epoch history without the per-class and confusion-cell scalars, the test set as charts
  (confusion matrix, ROC) and a predictions table with thumbnails of misclassified images, and at
  the end of training the best checkpoint and the run's files as artifacts.
- ``run_info``: what a training run records of its W&B run in ``metrics.json`` (``wandb``), which
  ``leuk.eval`` reads to log its evaluation beside that run (``log_evaluation``).

wandb is imported inside the functions that need it: a run without W&B never loads it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.loggers import Logger
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from leuk.metrics import is_confusion_key, is_per_class_key
from leuk.plots import most_confident_mistakes

log = logging.getLogger(__name__)

# Artifact types and names (with the W&B run's id: unique within a project).
MODEL_ARTIFACT = "model"
RUN_FILES_ARTIFACT = "run-files"
EVAL_ARTIFACT = "evaluation"
# The file name of the checkpoint inside its artifact, whatever the run called it: code that
# downloads ``model-<id>:best`` finds ``model.ckpt`` (Lightning's own checkpoint artifacts' name).
CHECKPOINT_FILE = "model.ckpt"


def model_artifact_name(run_id: str) -> str:
    return f"{MODEL_ARTIFACT}-{run_id}"


def run_files_artifact_name(run_id: str) -> str:
    return f"{RUN_FILES_ARTIFACT}-{run_id}"


def in_history(key: str, per_class: bool) -> bool:
    """Whether a logged metric goes to the W&B history: never a confusion cell (the matrix is a
    chart), a per-class value only with ``per_class`` (it reaches the summary from metrics.json)."""
    return not is_confusion_key(key) and (per_class or not is_per_class_key(key))


def run_info(run: Any) -> dict[str, Any]:
    """What ``leuk.eval`` needs to log beside a W&B run (``metrics.json``'s ``wandb`` entry)."""
    return {
        "id": run.id,
        "name": run.name,
        "project": run.project,
        # An offline run has no entity yet ("").
        "entity": run.entity or None,
        "group": run.group or None,
        "job_type": run.job_type or None,
        "tags": list(run.tags or ()),
        "mode": "offline" if run.offline else "online",
        # The run's own folder (``wandb sync <dir>`` uploads an offline run).
        "dir": str(Path(run.dir).parent),
    }


def predictions_table(
    probs: np.ndarray,
    targets: np.ndarray,
    class_names: Sequence[str],
    names: Sequence[str],
    image_of: Callable[[int], np.ndarray],
    max_images: int,
) -> Any:
    """One row per sample: its name, true and predicted class, confidence, each class's probability,
    and for the ``max_images`` most confident mistakes a thumbnail (empty for the others)."""
    import wandb

    preds = probs.argmax(axis=1)
    shown = set(most_confident_mistakes(probs, targets, max_images).tolist())
    columns = ["sample", "true", "predicted", "confidence", "correct"]
    columns += [f"p_{c}" for c in class_names] + ["image"]
    rows = []
    for i in range(len(targets)):
        image = wandb.Image(image_of(i)) if i in shown else None
        rows.append(
            [
                names[i],
                class_names[int(targets[i])],
                class_names[int(preds[i])],
                float(probs[i].max()),
                bool(preds[i] == targets[i]),
                *(float(p) for p in probs[i]),
                image,
            ]
        )
    return wandb.Table(columns=columns, data=rows)


def log_predictions(
    run: Any,
    probs: np.ndarray,
    targets: np.ndarray,
    class_names: Sequence[str],
    names: Sequence[str],
    image_of: Callable[[int], np.ndarray],
    max_images: int,
    prefix: str = "test/",
) -> None:
    """``<prefix>confusion_matrix`` and ``<prefix>roc`` as W&B charts, ``<prefix>predictions`` as a
    table (``predictions_table``)."""
    import wandb

    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    if not len(targets):
        return
    # wandb.plot.roc_curve takes column k of the probabilities for the k-th class *present* in the
    # targets: with a class absent from them, hand it the present classes' columns only.
    present = np.unique(targets)
    charts: dict[str, Any] = {
        f"{prefix}confusion_matrix": wandb.plot.confusion_matrix(
            y_true=targets.tolist(),
            preds=probs.argmax(axis=1).tolist(),
            class_names=list(class_names),
            title=f"{prefix}confusion matrix (row = true class)",
        ),
        f"{prefix}predictions": predictions_table(probs, targets, class_names, names, image_of, max_images),
    }
    roc = wandb.plot.roc_curve(
        targets, probs[:, present], labels=list(class_names), title=f"{prefix}ROC (one-vs-rest)"
    )
    if roc is not None:
        charts[f"{prefix}roc"] = roc
    run.log(charts)


def log_images(run: Any, plots: Mapping[str, str | Path], prefix: str = "plots/") -> None:
    """The run's PNG figures, each as ``<prefix><name>``."""
    import wandb

    if plots:
        run.log({f"{prefix}{name}": wandb.Image(str(path)) for name, path in plots.items()})


class WandbLogger(LightningWandbLogger):
    """Lightning's ``WandbLogger`` with leuk's history filter, test charts and artifacts.

    ``per_class_history``: per-class metrics in the per-epoch history too (default: only in the
    summary). ``log_best_checkpoint``: the best checkpoint as a ``model`` artifact at the end of
    training (offline too, unlike Lightning's ``log_model``). ``misclassified_max``: thumbnails of
    at most this many misclassified test images in the predictions table.
    """

    def __init__(
        self,
        *args: Any,
        per_class_history: bool = False,
        log_best_checkpoint: bool = True,
        misclassified_max: int = 25,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if misclassified_max < 0:
            raise ValueError(f"logger.wandb.misclassified_max must be >= 0, not {misclassified_max}")
        self.per_class_history = per_class_history
        self.log_best_checkpoint = log_best_checkpoint
        self.misclassified_max = misclassified_max

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        kept = {k: v for k, v in metrics.items() if in_history(k, self.per_class_history)}
        if kept:
            super().log_metrics(kept, step)

    @rank_zero_only
    def log_test_outputs(
        self,
        outputs: Mapping[str, np.ndarray],
        class_names: Sequence[str],
        names: Sequence[str],
        image_of: Callable[[int], np.ndarray],
        plots: Mapping[str, str | Path],
        thumbnails: bool = True,
    ) -> None:
        """The test charts and predictions table (thumbnails unless ``thumbnails`` is false) and
        the run's figures."""
        log_predictions(
            self.experiment,
            outputs["probs"],
            outputs["targets"],
            class_names,
            names,
            image_of,
            self.misclassified_max if thumbnails else 0,
        )
        log_images(self.experiment, plots)

    def run_info(self, checkpoint: str | None) -> dict[str, Any]:
        """``run_info`` and the name of the model artifact ``log_run_artifacts`` logs (None: none)."""
        info = run_info(self.experiment)
        logged = self.log_best_checkpoint and bool(checkpoint)
        info["model_artifact"] = model_artifact_name(info["id"]) if logged else None
        return info

    @rank_zero_only
    def log_run_artifacts(
        self, out_dir: str | Path, config_yaml: str, checkpoint: str | None, metadata: Mapping[str, Any]
    ) -> None:
        """``run-files-<id>`` (split.csv, metrics.json, config.yaml: the resolved config) and, with
        ``log_best_checkpoint`` and a ``checkpoint``, ``model-<id>`` (alias ``best``)."""
        import wandb

        run = self.experiment
        out_dir = Path(out_dir)
        files = wandb.Artifact(
            run_files_artifact_name(run.id), type=RUN_FILES_ARTIFACT, metadata=dict(metadata)
        )
        for name in ("split.csv", "metrics.json"):
            if (out_dir / name).is_file():
                files.add_file(str(out_dir / name), name=name)
        with files.new_file("config.yaml") as f:
            f.write(config_yaml)
        run.log_artifact(files)
        if self.log_best_checkpoint and checkpoint:
            model = wandb.Artifact(
                model_artifact_name(run.id),
                type=MODEL_ARTIFACT,
                metadata={**metadata, "original_filename": Path(checkpoint).name},
            )
            # "immutable": referenced in place, not copied into W&B's staging folder first (a
            # checkpoint can be large); the file must stay until an offline run is synced.
            model.add_file(checkpoint, name=CHECKPOINT_FILE, policy="immutable")
            run.log_artifact(model, aliases=["best"])


def leuk_wandb_loggers(loggers: Iterable[Logger]) -> list[WandbLogger]:
    return [lg for lg in loggers if isinstance(lg, WandbLogger)]


# ------------------------------------------------------------------ evaluation


def recorded_wandb_run(run_dir: str | Path) -> dict[str, Any] | None:
    """The W&B run a training run recorded in its ``metrics.json`` (None: it did not log to W&B,
    or has no metrics.json)."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text()).get("wandb")
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s (%s): the evaluation is not linked to its W&B run", path, exc)
        return None
    return info if isinstance(info, dict) and info.get("id") else None


def _numbers(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a nested mapping as flat ``a/b/c`` keys (lists and None left out)."""
    out: dict[str, float] = {}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_numbers(value, f"{full}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[full] = value
    return out


def eval_summary(result: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """The evaluation's numbers for the W&B summary: the metrics under their own keys (as in the
    training run's summary), the noise table as ``noise/<σ>/<metric>``, and every other number of
    eval.json under its path (``abstention/coverage``, ``latency/...``, ``xgboost/...``,
    ``calibration/...`` where present), and the shift table as ``shift/<name>/<strength>/<metric>``."""
    # Imported here: the noise path (prediction trainer, data) is no concern of the training
    # callbacks that import this module.
    from leuk.robustness import flatten

    summary = _numbers(result["metrics"])
    summary.update(flatten(result.get("noise") or [], prefix))
    # The shift table as shift/<name>/<strength>/<metric> (leuk.shifts), as the noise table.
    for row in result.get("shift") or []:
        key = f"shift/{row['shift']}/{row['strength']:g}/"
        summary.update({key + k.removeprefix(prefix): v for k, v in _numbers(row).items() if k != "strength"})
    rest = {k: v for k, v in result.items() if k != "metrics"}
    if isinstance(rest.get("abstention"), Mapping):
        rest["abstention"] = {k: v for k, v in rest["abstention"].items() if k != "curve"}
    summary.update(_numbers(rest))
    return summary


def _table(rows: Sequence[Mapping[str, Any]]) -> Any:
    import wandb

    columns = list(dict.fromkeys(k for row in rows for k in row))
    return wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in rows])


def start_eval_run(
    settings: Mapping[str, Any],
    train: Mapping[str, Any] | None,
    out_dir: str | Path,
    model_name: str,
    config: Mapping[str, Any],
) -> Any | None:
    """The W&B run of an evaluation, or None when ``settings['log']`` (auto, always, never) says no.

    A new run of ``job_type="eval"`` in the training run's project and group, named after it and
    carrying its id (``train_run_id`` in the config, a ``train_run:<id>`` tag); the training run
    itself is left as it was (see docs/evaluation.md for why it is not resumed).
    """
    import wandb

    when = str(settings.get("log", "auto"))
    if when == "never" or (when == "auto" and not train):
        return None
    train = dict(train or {})
    offline = settings.get("offline")
    if offline is None:
        offline = train.get("mode", "offline") == "offline"
    tags = [t for t in train.get("tags") or [] if not t.startswith("train_run:")]
    if train.get("id"):
        tags.append(f"train_run:{train['id']}")
    return wandb.init(
        project=settings.get("project") or train.get("project"),
        entity=settings.get("entity") or train.get("entity"),
        group=train.get("group"),
        job_type="eval",
        name=f"{train.get('name') or model_name}-eval",
        tags=list(dict.fromkeys(t[:64] for t in tags)),
        config={
            "train_run_id": train.get("id"),
            "train_run_name": train.get("name"),
            "train_run_dir": train.get("dir"),
            **config,
        },
        dir=str(out_dir),
        mode="offline" if offline else "online",
    )


def log_evaluation(
    run: Any,
    result: Mapping[str, Any],
    prefix: str,
    probs: np.ndarray,
    targets: np.ndarray,
    names: Sequence[str],
    image_of: Callable[[int], np.ndarray],
    max_images: int,
    out_dir: str | Path,
) -> None:
    """Everything of ``eval.json`` in the evaluation's W&B run: the summary (``eval_summary``), the
    noise and coverage charts, the test charts and predictions table, the figures, and eval.json
    with predictions.csv as an ``evaluation`` artifact."""
    import wandb

    out_dir = Path(out_dir)
    class_names = result["class_names"]
    log_predictions(run, probs, targets, class_names, names, image_of, max_images, prefix)
    log_images(run, {name: out_dir / path for name, path in (result.get("plots") or {}).items()})
    # Each chart keeps its points as a table of its own (``<key>_table``).
    charts: dict[str, Any] = {}
    if result.get("noise"):
        charts["noise/chart"] = wandb.plot.line(
            _table(result["noise"]),
            "sigma",
            f"{prefix}accuracy",
            title="accuracy against Gaussian noise σ (0–255)",
        )
    curve = (result.get("abstention") or {}).get("curve")
    if curve:
        charts["abstention/chart"] = wandb.plot.line(
            _table(curve), "threshold", "coverage", title="coverage against the confidence threshold"
        )
    if charts:
        run.log(charts)
    run.summary.update(eval_summary(result, prefix))
    artifact = wandb.Artifact(
        f"eval-{run.id}", type=EVAL_ARTIFACT, metadata={"train_run_id": run.config.get("train_run_id")}
    )
    for name in ("eval.json", "predictions.csv"):
        if (out_dir / name).is_file():
            artifact.add_file(str(out_dir / name), name=name)
    run.log_artifact(artifact)
