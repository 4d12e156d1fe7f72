"""``python -m leuk.cli.bench`` (or ``leuk.bench``): what the framework costs, against a plain loop.

In one process, for the same model, input size, batches and data: (1) training images/s of leuk's
full path (DataModule + Classifier + Trainer, logging on, decode cache warm); (2) training images/s
of a plain loop written here (same network initialization, optimizer, loss and loader, no
Lightning); (3) their ratio; (4) the loader's time per batch on its own, as a fraction of a training
step; (5) inference latency at batch size 1 (median, p90) and throughput at the training batch size;
(6) the model's FLOPs per image (forward, and a training step) and the training FLOP/s each path
achieves.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

import leuk  # noqa: F401  (config resolvers)
from leuk.benchmark import (
    bench_device,
    data_seconds_per_batch,
    flops_per_image,
    inference,
    lightning_throughput,
    plain_throughput,
)
from leuk.cli.errors import user_errors
from leuk.composition import build_datamodule, build_module
from leuk.config import config_dir
from leuk.config.schema import validate_bench_config
from leuk.utils.report import write_json
from leuk.utils.task import task_wrapper

log = logging.getLogger(__name__)


@task_wrapper
def bench(cfg: DictConfig) -> dict[str, Any]:
    validate_bench_config(cfg)
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
    device = bench_device(cfg)

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
    # A batch of 2: BatchNorm in training mode needs more than one value per channel.
    flops = flops_per_image(plain_module.net, datamodule.image_size, batch_size=2)
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
        **flops,
        # What each path achieves of the machine: training FLOPs per image times images/s.
        "lightning_train_flop_per_s": flops["train_flops_per_image"] * lightning_ips,
        "plain_train_flop_per_s": flops["train_flops_per_image"] * plain_ips,
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
    with user_errors("leuk-bench"):
        bench(cfg)


if __name__ == "__main__":
    main()
