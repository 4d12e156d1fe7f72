"""Time the decode-once cache: DataModule setup and a training epoch's loader, with and without it.

    python -m leuk.cli.timing data data=all data.root=../shared/data/all_taleqani \\
        data.image_size=224 data.num_workers=2 --epochs 3

The command (``leuk.cli.timing``) sets up three settings from scratch and iterates each one's
training loader for ``--epochs`` epochs with no model: ``data.cache=none`` (every epoch decodes
every file), ``data.cache=disk`` with an empty cache folder (setup decodes and writes it) and the
same again (setup reuses it). The first epoch includes the loader workers' start; the steady value
is the median of the later ones.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from leuk.data.datamodule import LeukDataModule


def time_setting(make_datamodule: Callable[[], LeukDataModule], epochs: int) -> dict[str, Any]:
    """Seconds to build and set up the DataModule ``make_datamodule`` gives, and to iterate its
    training loader, per epoch."""
    start = time.perf_counter()
    datamodule = make_datamodule()
    datamodule.setup()
    setup_s = time.perf_counter() - start
    loader = datamodule.train_dataloader()
    epoch_s, images = [], 0
    for _ in range(epochs):
        start, images = time.perf_counter(), 0
        for x, _y in loader:
            images += len(x)
        epoch_s.append(time.perf_counter() - start)
    steady = epoch_s[1:] or epoch_s
    return {
        "setup_s": round(setup_s, 3),
        "epoch_s": [round(s, 3) for s in epoch_s],
        "steady_epoch_s": round(statistics.median(steady), 3),
        "train_images": images,
        "batches": len(loader),
        "cache_hit": bool(datamodule.decoded.from_cache),
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        f"image size {result['image_size']}, batch {result['batch_size']}, "
        f"{result['num_workers']} loader workers",
        "| setting | setup s | epoch s (each) | steady epoch s | train images |",
        "|---|---|---|---|---|",
    ]
    for name, r in result["settings"].items():
        epochs = ", ".join(f"{s:.2f}" for s in r["epoch_s"])
        lines.append(
            f"| {name} | {r['setup_s']:.2f} | {epochs} | {r['steady_epoch_s']:.2f} | {r['train_images']} |"
        )
    return "\n".join(lines)
