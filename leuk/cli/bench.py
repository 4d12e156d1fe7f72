"""``python -m leuk.cli.bench`` (or ``leuk.bench``): what the framework costs, against a plain loop.

In one process, for the same model, input size, batches and data: (1) training images/s of leuk's
full path (DataModule + Classifier + Trainer, logging on, decode cache warm); (2) training images/s
of a plain loop written here (same network initialization, optimizer, loss and loader, no
Lightning); (3) their ratio; (4) the loader's time per batch on its own, as a fraction of a training
step; (5) inference latency at batch size 1 (median, p90) and throughput at the training batch size.
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

import leuk  # noqa: F401  (config resolvers)
from leuk.composition import build_datamodule, build_module
from leuk.config import config_dir
from leuk.config.schema import validate_train_config
from leuk.models.module import Classifier
from leuk.utils.report import write_json
from leuk.utils.task import task_wrapper

log = logging.getLogger(__name__)


class StepTimer(L.Callback):
    """Wall time from the start of training step ``warmup`` to the end of the last step: data
    loading, the step itself and all of Lightning's per-step work."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start: float | None = None
        self.end: float | None = None
        self.images = 0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.warmup and self.start is None:
            self.start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.start is not None:
            self.images += len(batch[1])
            self.end = time.perf_counter()


def _epochs(loader: Any) -> Iterator[Any]:
    """The loader's batches, epoch after epoch, as Lightning's loop draws them.

    Not ``itertools.cycle``: it replays the first epoch's batches from memory, so a run longer
    than an epoch would skip decoding and augmentation and flatter the plain loop and the data time.
    """
    while True:
        yield from loader


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device(cfg: DictConfig) -> torch.device:
    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def _autocast(cfg: DictConfig, device: torch.device) -> Any:
    return _autocast_for(str(cfg.trainer.get("precision", "32-true")), device)


def _autocast_for(precision: str, device: torch.device) -> Any:
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16"):
        return torch.autocast(device.type, dtype=torch.float16)
    return torch.autocast(device.type, enabled=False)


def lightning_throughput(cfg: DictConfig, module: Classifier, datamodule: Any, out_dir: Path) -> float:
    b = cfg.bench
    timer = StepTimer(b.warmup)
    trainer = instantiate(
        cfg.trainer,
        max_steps=b.warmup + b.steps,
        max_epochs=-1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=CSVLogger(str(out_dir), name="bench_csv", version=""),
        callbacks=[timer],
    )
    trainer.fit(module, datamodule=datamodule)
    if timer.start is None or timer.end is None:
        raise RuntimeError("the benchmark ran fewer steps than bench.warmup + 1")
    return timer.images / (timer.end - timer.start)


def plain_throughput(
    cfg: DictConfig, module: Classifier, loader: Any, device: torch.device
) -> tuple[float, float]:
    """Images/s and seconds per step of a hand-written loop over the same loader."""
    b = cfg.bench
    net = module.net.to(device).train()
    criterion = module.criterion.to(device)
    optimizer = instantiate(cfg.optimizer)(params=[p for p in net.parameters() if p.requires_grad])
    batches = _epochs(loader)
    images = 0
    start = 0.0
    for step in range(b.warmup + b.steps):
        if step == b.warmup:
            _sync(device)
            start = time.perf_counter()
        x, y = next(batches)
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        # The network normalizes its uint8 input itself (leuk.models.normalize), as in training.
        with _autocast(cfg, device):
            loss = criterion(net(x), y)
        extra = getattr(net, "regularization_loss", None)
        if callable(extra):
            loss = loss + extra()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= b.warmup:
            images += len(y)
    _sync(device)
    seconds = time.perf_counter() - start
    return images / seconds, seconds / b.steps


def data_seconds_per_batch(loader: Any, steps: int) -> float:
    batches = _epochs(loader)
    next(batches)  # workers started
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    return (time.perf_counter() - start) / steps


@torch.no_grad()
def measure_inference(
    net: torch.nn.Module,
    device: torch.device,
    size: int,
    *,
    warmup: int,
    iters: int,
    batch_size: int,
    precision: str = "32-true",
) -> dict[str, float]:
    """Batch-size-1 latency (median, p90, ms per image, after ``warmup`` calls) and images/s at
    ``batch_size``, of ``net`` in eval mode on ``device`` (also used by ``leuk.eval``)."""
    net = net.to(device).eval()
    one = torch.randn(1, 3, size, size, device=device)
    times = []
    with _autocast_for(precision, device):
        for i in range(warmup + iters):
            _sync(device)
            t = time.perf_counter()
            net(one)
            _sync(device)
            if i >= warmup:
                times.append((time.perf_counter() - t) * 1000)
        batch = torch.randn(batch_size, 3, size, size, device=device)
        net(batch)
        _sync(device)
        reps = 5
        t = time.perf_counter()
        for _ in range(reps):
            net(batch)
        _sync(device)
        throughput = reps * batch_size / (time.perf_counter() - t)
    return {
        "latency_ms_median": statistics.median(times),
        "latency_ms_p90": float(np.percentile(times, 90)),
        "inference_images_per_s": throughput,
    }


def inference(cfg: DictConfig, net: torch.nn.Module, device: torch.device, size: int) -> dict[str, float]:
    b = cfg.bench
    return measure_inference(
        net,
        device,
        size,
        warmup=b.warmup,
        iters=b.latency_iters,
        batch_size=b.batch_size,
        precision=str(cfg.trainer.get("precision", "32-true")),
    )


@task_wrapper
def bench(cfg: DictConfig) -> dict[str, Any]:
    validate_train_config(cfg, extra_top_level={"bench": dict, "plots": bool})
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg, batch_size=int(cfg.bench.batch_size))
    datamodule.setup()
    # The benchmark trains without validation: a scheduler watching val/ watches train/loss.
    module = build_module(cfg, datamodule, validated=False)
    # The Trainer switches deterministic algorithms on when asked; the plain loop runs under the same mode.
    torch.use_deterministic_algorithms(bool(cfg.trainer.get("deterministic", False)))
    # Both paths start from the same weights.
    plain_module = copy.deepcopy(module)
    device = _device(cfg)

    # Alternate the two paths and keep each one's best repeat: background load or caches warming
    # up then cost neither path more than the other.
    loader = datamodule.train_dataloader()
    lightning_runs, plain_runs = [], []
    for _ in range(int(cfg.bench.repeats)):
        plain_runs.append(plain_throughput(cfg, plain_module, loader, device))
        lightning_runs.append(lightning_throughput(cfg, module, datamodule, out_dir))
    lightning_ips = max(lightning_runs)
    plain_ips, step_s = max(plain_runs)
    data_s = data_seconds_per_batch(loader, cfg.bench.steps)
    result: dict[str, Any] = {
        "model": cfg.model.name,
        "image_size": datamodule.image_size,
        "batch_size": int(cfg.bench.batch_size),
        "steps": int(cfg.bench.steps),
        "warmup": int(cfg.bench.warmup),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
        "precision": str(cfg.trainer.get("precision", "32-true")),
        "channels_last": bool(cfg.model.get("channels_last", False)),
        "num_workers": datamodule.num_workers,
        "repeats": int(cfg.bench.repeats),
        # Every repeat, so the spread behind the best-of values is on record.
        "lightning_images_per_s_runs": lightning_runs,
        "plain_images_per_s_runs": [ips for ips, _ in plain_runs],
        "lightning_images_per_s": lightning_ips,
        "plain_images_per_s": plain_ips,
        "ratio": lightning_ips / plain_ips,
        "step_seconds": step_s,
        "data_seconds_per_batch": data_s,
        "data_fraction_of_step": data_s / step_s,
        **inference(cfg, plain_module.net, device, datamodule.image_size),
        "torch": torch.__version__,
        "lightning": L.__version__,
    }
    write_json(out_dir / "bench.json", result)
    table = Table(
        title=f"leuk.bench: {result['model']} at {result['image_size']} px, batch {result['batch_size']}"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in result.items():
        table.add_row(key, _fmt(value))
    Console().print(table)
    return result


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="bench")
def main(cfg: DictConfig) -> None:
    bench(cfg)


if __name__ == "__main__":
    main()
