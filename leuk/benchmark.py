"""The measurements behind ``leuk.cli.bench``: leuk's training path and a plain PyTorch loop over
the same loader, the loader alone, and inference latency (``leuk.latency``)."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig

from leuk.latency import autocast_for, measure_inference, sync
from leuk.models.module import Classifier


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


def epochs(loader: Any) -> Iterator[Any]:
    """The loader's batches, epoch after epoch, as Lightning's loop draws them.

    Not ``itertools.cycle``: it replays the first epoch's batches from memory, so a run longer
    than an epoch would skip decoding and augmentation and flatter the plain loop and the data time.
    """
    while True:
        yield from loader


def bench_device(cfg: DictConfig) -> torch.device:
    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def bench_autocast(cfg: DictConfig, device: torch.device) -> Any:
    return autocast_for(str(cfg.trainer.get("precision", "32-true")), device)


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
    batches = epochs(loader)
    images = 0
    start = 0.0
    for step in range(b.warmup + b.steps):
        if step == b.warmup:
            sync(device)
            start = time.perf_counter()
        x, y = next(batches)
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        # The network normalizes its uint8 input itself (leuk.models.normalize), as in training.
        with bench_autocast(cfg, device):
            loss = criterion(net(x), y)
        extra = getattr(net, "regularization_loss", None)
        if callable(extra):
            loss = loss + extra()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= b.warmup:
            images += len(y)
    sync(device)
    seconds = time.perf_counter() - start
    return images / seconds, seconds / b.steps


def data_seconds_per_batch(loader: Any, steps: int) -> float:
    batches = epochs(loader)
    next(batches)  # workers started
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    return (time.perf_counter() - start) / steps


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


def _conv_backward_flop(
    grad_out_shape: Any,
    x_shape: Any,
    w_shape: Any,
    bias: Any,
    stride: Any,
    padding: Any,
    dilation: Any,
    transposed: bool,
    output_padding: Any,
    groups: int,
    output_mask: Any,
    out_shape: Any,
    **kwargs: Any,
) -> int:
    """A convolution's backward: the input gradient and the weight gradient each cost the forward
    pass's multiply-adds. PyTorch's own formula (2.14) counts a grouped (e.g. depthwise)
    convolution's weight gradient as a dense one, ``groups`` times too many, which made
    EfficientNet's training step look 14 forward passes long."""
    from torch.utils.flop_counter import conv_backward_flop, conv_flop_count

    if transposed:
        return conv_backward_flop(
            grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation, transposed,
            output_padding, groups, output_mask, out_shape, **kwargs,
        )  # fmt: skip
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape))
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


_CONV_BACKWARD = {torch.ops.aten.convolution_backward: _conv_backward_flop}


def flops_per_image(net: torch.nn.Module, size: int, batch_size: int) -> dict[str, float]:
    """FLOPs per image of one inference forward pass and of one training step (forward and
    backward), by PyTorch's FLOP counter (``torch.utils.flop_counter``: the matrix products and
    convolutions, 2 FLOPs per multiply-add; element-wise work is not counted), on the CPU.

    Counted on a copy, so the network's weights, gradients and BatchNorm statistics stay as they are.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counted = copy.deepcopy(net).cpu()
    # uint8 input, as the loader serves it (the network normalizes it itself).
    x = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8)
    counted.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as forward:
        counted(x)
    counted.train()
    with FlopCounterMode(display=False, custom_mapping=_CONV_BACKWARD) as step:
        out = counted(x)
        out.float().sum().backward()
    return {
        "forward_flops_per_image": forward.get_total_flops() / batch_size,
        "train_flops_per_image": step.get_total_flops() / batch_size,
    }
