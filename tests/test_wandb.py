"""W&B offline: one tiny training run and its evaluation, read back from the runs' own files.

An offline run keeps its name, config, history, summary and artifacts in its transaction log
(``run-<id>.wandb``: LevelDB-style log blocks of ``wandb_internal_pb2.Record`` protobufs), which
``read_offline_run`` parses; figures and tables are files under ``files/media/``.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from leuk.cli.eval import evaluate
from leuk.cli.train import train
from leuk.metrics import is_per_class_key
from leuk.tracking import WandbLogger, in_history
from tests.helpers import TINY, compose_config

# The transaction log: a 7-byte file header (":W&B", magic, version), then records in 32 KiB
# blocks, each chunk behind a 7-byte header (CRC, length, kind: full, first, middle, last).
_FILE_HEADER, _BLOCK, _CHUNK_HEADER = 7, 32 * 1024, 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
# Thumbnails in the training run's predictions table (fewer than the tiny run's mistakes).
THUMBNAILS = 2


def _payloads(data: bytes) -> list[bytes]:
    out, pos, pending = [], _FILE_HEADER, b""
    while pos + _CHUNK_HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK_HEADER:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + _CHUNK_HEADER])
        chunk = data[pos + _CHUNK_HEADER : pos + _CHUNK_HEADER + length]
        pos += _CHUNK_HEADER + length
        if kind == _FULL:
            out.append(chunk)
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            out.append(pending + chunk)
    return out


@dataclass
class OfflineRun:
    folder: Path
    run: Any = None
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history_keys: set[str] = field(default_factory=set)
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)

    def media(self, pattern: str) -> list[Path]:
        return sorted((self.folder / "files" / "media").glob(pattern))


def _key(item: Any) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def read_offline_run(out_dir: Path) -> OfflineRun:
    """The one offline W&B run under ``<out_dir>/wandb``."""
    from wandb.proto import wandb_internal_pb2 as pb

    (folder,) = (out_dir / "wandb").glob("offline-run-*")
    (log,) = folder.glob("run-*.wandb")
    run = OfflineRun(folder)
    for payload in _payloads(log.read_bytes()):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run = record.run
            updates = record.run.config.update
        elif kind == "config":
            updates = record.config.update
        elif kind == "summary":
            run.summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
            continue
        elif kind == "history":
            run.history_keys |= {_key(i) for i in record.history.item}
            continue
        elif kind == "artifact":
            a = record.artifact
            run.artifacts[a.name] = {
                "type": a.type,
                "aliases": list(a.aliases),
                "files": sorted(c.path for c in a.manifest.contents),
                "metadata": json.loads(a.metadata or "null"),
            }
            continue
        else:
            continue
        run.config.update({_key(i): json.loads(i.value_json) for i in updates})
    return run


@dataclass
class Runs:
    train_dir: Path
    metrics: dict[str, Any]
    train: OfflineRun
    eval_dir: Path
    result: dict[str, Any]
    eval: OfflineRun


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """A one-epoch tiny run with logger=wandb, then leuk.eval of its best checkpoint."""
    import wandb

    root = tmp_path_factory.mktemp("wandb")
    train_dir, eval_dir = root / "train", root / "eval"
    overrides = [
        *TINY,
        "logger=wandb",
        "trainer.max_epochs=1",
        f"logger.wandb.misclassified_max={THUMBNAILS}",
    ]
    metrics = train(compose_config(overrides, output_dir=train_dir))
    assert wandb.run is None, "the training's W&B run was left open"
    eval_overrides = [f"ckpt_path={metrics['best_checkpoint']}", "noise_sigmas=[0,8]", "latency=false"]
    result = evaluate(compose_config(eval_overrides, output_dir=eval_dir, config_name="eval"))
    assert wandb.run is None, "the evaluation's W&B run was left open"
    return Runs(train_dir, metrics, read_offline_run(train_dir), eval_dir, result, read_offline_run(eval_dir))


def test_training_run(runs: Runs) -> None:
    run, metrics = runs.train, runs.metrics
    # Named, grouped and tagged (outside a Hydra app no command line: model and data only).
    assert run.run.display_name == "mcb_hypernet-synthetic"
    assert run.run.run_group == "train" and run.run.job_type == "train"
    assert list(run.run.tags) == ["model:mcb_hypernet", "seed:42"]
    # metrics.json names the run (what leuk.eval links to).
    saved = json.loads((runs.train_dir / "metrics.json").read_text())["wandb"]
    assert saved["id"] == run.run.run_id and saved["name"] == run.run.display_name
    assert saved["mode"] == "offline" and Path(saved["dir"]) == run.folder
    assert saved["model_artifact"] == f"model-{run.run.run_id}"

    # Artifacts: the best checkpoint, and the run's files with the resolved config.
    model = run.artifacts[f"model-{run.run.run_id}"]
    assert model["type"] == "model" and "best" in model["aliases"] and model["files"] == ["model.ckpt"]
    assert model["metadata"]["original_filename"] == Path(metrics["best_checkpoint"]).name
    files = run.artifacts[f"run-files-{run.run.run_id}"]
    assert files["files"] == ["config.yaml", "metrics.json", "split.csv"]

    # The summary holds the test metrics (the runs table compares sweeps by them).
    assert run.summary["test/mcc"] == pytest.approx(metrics["test/mcc"])
    assert run.summary["val/mcc"] == pytest.approx(metrics["val/mcc"])
    # The history: no confusion cell, no per-class value (dozens per epoch); the epoch metrics stay.
    assert {"train/loss", "val/loss", "val/mcc", "test/accuracy"} <= run.history_keys
    assert not [k for k in run.history_keys | set(run.summary) if "/confusion/" in k]
    assert not [k for k in run.history_keys if is_per_class_key(k)]

    # Charts and the predictions table instead: one row per test image, thumbnails capped.
    assert run.config["_wandb/visualize/test/confusion_matrix"] and run.config["_wandb/visualize/test/roc"]
    (table,) = run.media("table/test/predictions_*.table.json")
    content = json.loads(table.read_text())
    assert len(content["data"]) == metrics["n_test"]
    n_wrong = sum(not row[content["columns"].index("correct")] for row in content["data"])
    thumbnails = [row[-1] for row in content["data"] if row[-1] is not None]
    assert len(thumbnails) == min(THUMBNAILS, n_wrong) > 0
    # The run's figures.
    names = {p.name.rsplit("_", 2)[0] for p in run.media("images/plots/*.png")}
    assert {"confusion_matrix", "roc", "misclassified", "training_curves"} <= names


def test_evaluation_run_is_linked_to_the_training_run(runs: Runs) -> None:
    train_run, run, result = runs.train.run, runs.eval, runs.result
    assert run.run.job_type == "eval"
    assert run.run.project == train_run.project and run.run.run_group == train_run.run_group
    assert run.run.display_name == f"{train_run.display_name}-eval"
    assert run.config["train_run_id"] == train_run.run_id
    assert f"train_run:{train_run.run_id}" in run.run.tags
    assert result["wandb"]["id"] == run.run.run_id
    assert json.loads((runs.eval_dir / "eval.json").read_text())["wandb"]["train_run_id"] == train_run.run_id
    # The evaluation's numbers: metrics, noise table, abstention.
    assert run.summary["test/accuracy"] == pytest.approx(result["metrics"]["test/accuracy"])
    assert run.summary["noise/8/accuracy"] == pytest.approx(result["noise"][1]["test/accuracy"])
    assert run.summary["abstention/coverage"] == pytest.approx(result["abstention"]["coverage"])
    assert run.config["_wandb/visualize/noise/chart"] and run.config["_wandb/visualize/test/roc"]
    names = {p.name.rsplit("_", 2)[0] for p in run.media("images/plots/*.png")}
    assert {"confusion_matrix", "roc", "misclassified", "noise", "coverage"} <= names
    assert run.artifacts[f"eval-{run.run.run_id}"]["files"] == ["eval.json", "predictions.csv"]


def test_history_filter() -> None:
    """What leuk's logger keeps of the metrics Lightning hands it each epoch."""
    sent: list[dict[str, float]] = []

    class Experiment:
        def log(self, values: dict[str, float]) -> None:
            sent.append(values)

    logger = WandbLogger(experiment=Experiment())
    logger.log_metrics(
        {
            "val/mcc": 0.5,
            "val/pos/recall": 0.5,
            "val/weighted/f1": 0.5,
            "val/recall/Pro-B": 0.5,
            "val/confusion/Pro-B/Pre-B": 3.0,
        },
        step=7,
    )
    assert sent == [{"val/mcc": 0.5, "val/pos/recall": 0.5, "val/weighted/f1": 0.5, "trainer/global_step": 7}]
    assert in_history("val/recall/Pro-B", per_class=True)
    assert not in_history("test/confusion/Pro-B/Pre-B", per_class=True)
