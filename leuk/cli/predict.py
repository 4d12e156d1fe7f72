"""Classify new images: ``python -m leuk.cli.predict ckpt_path=<x>.ckpt input=<file or folder>``
(or ``leuk.predict``).

Writes ``predictions.csv`` (path, predicted class, confidence, uncertain flag, each class's
probability) into its own run folder and prints a summary. Files that cannot be read are listed (on
the console and in ``unreadable.csv``; a broken symbolic link is one of them) and the others are
still predicted; when none can be read the command fails. The images go through ``trainer.predict``
as in ``leuk.eval`` (``leuk.predictions``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

import leuk  # noqa: F401  (registers the config resolvers before Hydra composes)
from leuk.checkpoints import load_trained
from leuk.cli.errors import user_errors
from leuk.config import config_dir
from leuk.config.schema import validate_predict_config
from leuk.data.prediction import PredictionDataModule
from leuk.data.sources import IMAGE_EXTENSIONS, DataError, is_listed_file
from leuk.predictions import (
    describe_preprocess,
    load_split,
    predict_probs,
    prediction_trainer,
    predictions_table,
    preprocess_for_run,
    resolve_device,
    run_dir_of,
)
from leuk.utils.report import print_config_tree
from leuk.utils.task import task_wrapper

log = logging.getLogger(__name__)

# Images decoded at a time (at least one batch): a large folder is never held in memory at once.
CHUNK = 256


def _absolute(path: Path) -> str:
    # A broken link keeps its own name (resolving it would name the file that is not there).
    return str(path.resolve() if path.exists() else path.parent.resolve() / path.name)


def find_images(input_path: str | Path) -> list[str]:
    """The image itself, or every file with an image extension below a folder (sorted); broken
    symbolic links included, so that they are listed as unreadable rather than lost."""
    path = Path(input_path).expanduser()
    if path.is_file() or (path.is_symlink() and not path.exists()):
        return [_absolute(path)]
    if not path.is_dir():
        raise DataError(f"input: no such file or folder '{path}'")
    files = (p for p in path.rglob("*") if is_listed_file(p) and p.suffix.lower() in IMAGE_EXTENSIONS)
    return sorted(_absolute(p) for p in files)


def _print_summary(
    frame: pd.DataFrame, class_names: list[str], bad: list[tuple[str, str]], out: Path
) -> None:
    table = Table(title=f"predictions: {len(frame)} images")
    table.add_column("class")
    table.add_column("predicted", justify="right")
    table.add_column("of them uncertain", justify="right")
    for name in class_names:
        mine = frame["predicted_class"] == name
        table.add_row(name, str(int(mine.sum())), str(int((mine & frame["uncertain"]).sum())))
    console = Console()
    console.print(table)
    if bad:
        console.print(f"{len(bad)} file(s) could not be read (listed in {out / 'unreadable.csv'}):")
        for path, reason in bad:
            console.print(f"  {path}: {reason}", markup=False)
    console.print(f"predictions: {out / 'predictions.csv'}", markup=False)


@task_wrapper
def predict(cfg: DictConfig) -> dict[str, Any]:
    """Predict every image of ``cfg.input``; return a summary (the rows are in predictions.csv)."""
    validate_predict_config(cfg)
    if cfg.get("print_config"):
        print_config_tree(cfg)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trained = load_trained(cfg.ckpt_path)
    class_names = trained.class_names
    run_dir = run_dir_of(cfg.ckpt_path)
    preprocess = preprocess_for_run(run_dir, load_split(run_dir), trained.preprocess_steps)
    paths = find_images(cfg.input)
    if not paths:
        raise DataError(f"input: no image files ({', '.join(IMAGE_EXTENSIONS)}) in '{cfg.input}'")

    trainer = prediction_trainer(resolve_device(cfg.device))
    kept: list[str] = []
    probs: list[np.ndarray] = []
    bad: list[tuple[str, str]] = []
    chunk = max(cfg.batch_size, CHUNK)
    for start in range(0, len(paths), chunk):
        part = PredictionDataModule(
            paths[start : start + chunk], trained.image_size, preprocess=preprocess, batch_size=cfg.batch_size
        )
        part.setup()
        bad += part.bad
        if part.paths:
            kept += part.paths
            probs.append(predict_probs(trainer, trained.module, part))
    if bad:
        pd.DataFrame(bad, columns=["path", "reason"]).to_csv(out_dir / "unreadable.csv", index=False)
        log.warning("%d file(s) could not be read: %s", len(bad), [p for p, _ in bad][:10])
    if not kept:
        listing = "\n".join(f"  {path}: {reason}" for path, reason in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise DataError(
            f"input: none of the {len(paths)} image file(s) in '{cfg.input}' could be read (all listed "
            f"in {out_dir / 'unreadable.csv'}):\n{listing}{more}"
        )
    frame = predictions_table(kept, np.concatenate(probs), class_names, cfg.abstain_threshold)
    frame.to_csv(out_dir / "predictions.csv", index=False)
    _print_summary(frame, class_names, bad, out_dir)
    return {
        "checkpoint": str(Path(cfg.ckpt_path).expanduser().resolve()),
        "n_images": len(paths),
        "n_predicted": len(frame),
        "n_uncertain": int(frame["uncertain"].sum()),
        "predicted_per_class": {n: int((frame["predicted_class"] == n).sum()) for n in class_names},
        "unreadable": [{"path": p, "reason": r} for p, r in bad],
        "preprocess": describe_preprocess(preprocess),
        "predictions_csv": str(out_dir / "predictions.csv"),
    }


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="predict")
def main(cfg: DictConfig) -> None:
    with user_errors("leuk-predict"):
        predict(cfg)


if __name__ == "__main__":
    main()
