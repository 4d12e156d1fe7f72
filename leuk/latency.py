"""Inference latency and throughput of a network, as ``leuk.eval`` and ``leuk.bench`` report them."""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously: a timer must not stop early)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast_for(precision: str, device: torch.device) -> Any:
    """The autocast context of a Lightning ``precision`` string (off for full precision)."""
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16"):
        return torch.autocast(device.type, dtype=torch.float16)
    return torch.autocast(device.type, enabled=False)


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
    ``batch_size``, of ``net`` in eval mode on ``device``."""
    net = net.to(device).eval()
    one = torch.randn(1, 3, size, size, device=device)
    times = []
    with autocast_for(precision, device):
        for i in range(warmup + iters):
            sync(device)
            t = time.perf_counter()
            net(one)
            sync(device)
            if i >= warmup:
                times.append((time.perf_counter() - t) * 1000)
        batch = torch.randn(batch_size, 3, size, size, device=device)
        net(batch)
        sync(device)
        reps = 5
        t = time.perf_counter()
        for _ in range(reps):
            net(batch)
        sync(device)
        throughput = reps * batch_size / (time.perf_counter() - t)
    return {
        "latency_ms_median": statistics.median(times),
        "latency_ms_p90": float(np.percentile(times, 90)),
        "inference_images_per_s": throughput,
    }
