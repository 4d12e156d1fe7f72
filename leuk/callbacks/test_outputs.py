"""The test set's predictions, each one (not only the metrics): probabilities, targets and loader
indices gathered from every DDP rank, the confusion matrix, and on rank 0 the run's plots and
what W&B shows of the test set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from leuk.metrics import confusion_matrix
from leuk.plots import load_history, write_test_plots
from leuk.tracking import WandbLogger as LeukWandbLogger


def gather_outputs(parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> dict[str, np.ndarray]:
    """Concatenate (probs, targets, indices) batches, from every DDP rank, sorted by index."""
    local = [tuple(torch.cat(column).numpy() for column in zip(*parts, strict=True))] if parts else []
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Shards differ in size by one image, which all_gather of tensors cannot take.
        gathered: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, local)
        local = [part for rank in gathered for part in rank]
    if not local:
        empty = np.zeros(0, np.int64)
        return {"probs": np.zeros((0, 0), np.float32), "targets": empty, "indices": empty}
    probs, targets, indices = (np.concatenate(column) for column in zip(*local, strict=True))
    order = np.argsort(indices, kind="stable")
    return {"probs": probs[order], "targets": targets[order], "indices": indices[order]}


class TestOutputs(L.Callback):
    """After ``trainer.test``: ``outputs`` (probs, targets, indices into the test split),
    ``confusion_matrix`` (counts, every rank), ``plots`` (name → path under ``out_dir``, rank 0,
    {} with ``write_plots=False``). It also keeps the per-epoch loss and accuracy (``history``) for
    the training curves when no CSV logger keeps them."""

    def __init__(self, out_dir: str | Path, write_plots: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.write_plots = write_plots
        self.outputs: dict[str, np.ndarray] | None = None
        self.confusion_matrix: list[list[int]] | None = None
        self.plots: dict[str, str] = {}
        self.history: list[dict[str, float]] = []
        self._parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._order: list[int] | None = None
        self._seen = 0
        self._validated = False

    # -------------------------------------------------- the training curves
    def _record(self, trainer: L.Trainer, epoch: int) -> None:
        # Epoch values reach callback_metrics only after every on_*_epoch_end hook, so an epoch is
        # recorded when the next one starts (or the fit ends).
        if epoch < 0 or any(h["epoch"] == epoch for h in self.history):
            return
        entry: dict[str, float] = {"epoch": epoch}
        stages = ("train", "val") if self._validated else ("train",)
        for key in (f"{s}/{m}" for s in stages for m in ("loss", "accuracy")):
            if key in trainer.callback_metrics:
                entry[key] = float(trainer.callback_metrics[key])
        self.history.append(entry)
        self._validated = False

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, trainer.current_epoch - 1)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Only fitting epochs go into the curves (not the sanity check, nor the post-fit
        # trainer.validate of the best checkpoint).
        self._validated = not trainer.sanity_checking and trainer.state.fn == "fit"

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, trainer.current_epoch - 1)

    # -------------------------------------------------- the test outputs
    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._parts, self._seen = [], 0
        loaders = trainer.test_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        sampler = getattr(loader, "sampler", None)
        # The dataset indices the test loader yields, in order (this rank's share under DDP).
        self._order = None if sampler is None else [int(i) for i in sampler]

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        probs, targets = outputs["probs"], outputs["targets"]
        n = len(targets)
        if self._order is not None and self._seen + n <= len(self._order):
            idx = torch.tensor(self._order[self._seen : self._seen + n])
        else:
            idx = torch.arange(self._seen, self._seen + n)
        self._seen += n
        self._parts.append((probs.cpu(), targets.cpu(), idx))

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.outputs = gather_outputs(self._parts)
        self._parts = []
        num_classes = len(getattr(pl_module, "class_names", [])) or self.outputs["probs"].shape[1]
        self.confusion_matrix = confusion_matrix(self.outputs["probs"], self.outputs["targets"], num_classes)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        figures = self._write_plots(trainer) if self.write_plots else {}
        self.plots = {name: str(path.relative_to(self.out_dir)) for name, path in figures.items()}
        self._send_to_wandb(trainer, figures)

    def _send_to_wandb(self, trainer: L.Trainer, figures: dict[str, Path]) -> None:
        """leuk's W&B logger gets the test charts and predictions table (thumbnails only with plots),
        Lightning's own the figures."""
        outputs = self.outputs
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers or outputs is None or not len(outputs["targets"]):
            return
        datamodule: Any = trainer.datamodule
        test_set = datamodule.dataset("test")
        indices = outputs["indices"]
        for logger in loggers:
            if isinstance(logger, LeukWandbLogger):
                logger.log_test_outputs(
                    outputs,
                    datamodule.class_names,
                    [str(test_set.paths[int(test_set.indices[i])]) for i in indices],
                    lambda k: test_set.image(int(indices[k])),
                    figures,
                    thumbnails=self.write_plots,
                )
            else:
                for name, path in figures.items():
                    logger.log_image(key=f"plots/{name}", images=[str(path)])

    def _write_plots(self, trainer: L.Trainer) -> dict[str, Path]:
        """The test figures and training curves under ``<run>/plots/``.

        The curves come from the CSV logger's ``metrics.csv`` where there is one (it spans a
        resumed run's earlier epochs too), else from the epochs recorded in this process.
        """
        outputs = self.outputs
        if outputs is None or not len(outputs["targets"]):
            return {}
        loggers = trainer.loggers
        csv = next((lg for lg in loggers if isinstance(lg, CSVLogger)), None)
        metrics_csv = Path(csv.experiment.metrics_file_path) if csv is not None else None
        history = load_history(metrics_csv) if metrics_csv and metrics_csv.is_file() else self.history
        datamodule: Any = trainer.datamodule
        test_set = datamodule.dataset("test")
        folder = self.out_dir / "plots"
        return write_test_plots(folder, outputs, datamodule.class_names, test_set.image, history)
