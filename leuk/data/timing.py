"""Time the decode-once cache: DataModule setup and a training epoch's loader, with and without it.

    python -m leuk.data.timing data=all data.root=../shared/data/all_taleqani \\
        data.image_size=224 data.num_workers=2 --epochs 3

Arguments other than the options below are ``train.yaml`` overrides. Three settings, each set up
from scratch and its training loader iterated for ``--epochs`` epochs with no model:
``data.cache=none`` (every epoch decodes every file), ``data.cache=disk`` with an empty cache folder
(setup decodes and writes it) and the same again (setup reuses it). The first epoch includes the
loader workers' start; the steady value is the median of the later ones.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from leuk.config import config_dir


def compose_train(overrides: Sequence[str], output_dir: Path) -> DictConfig:
    """``train.yaml`` with ``overrides``, outside a Hydra run (the run folder set by hand)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def time_setting(cfg: DictConfig, epochs: int) -> dict[str, Any]:
    """Seconds to set the DataModule up and to iterate its training loader, per epoch."""
    from leuk.train import build_datamodule

    start = time.perf_counter()
    datamodule = build_datamodule(cfg)
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


def time_cache(overrides: Sequence[str], epochs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="leuk-timing-") as tmp:
        base = [*overrides, f"data.cache_dir={tmp}/decoded"]
        out = Path(tmp) / "run"
        settings = {
            "no cache (data.cache=none)": "none",
            "disk cache, first run (decodes)": "disk",
            "disk cache, reused": "disk",  # the same folder: setup reads what the run above wrote
        }
        results = {
            name: time_setting(compose_train([*base, f"data.cache={cache}"], out), epochs)
            for name, cache in settings.items()
        }
        cfg = compose_train(base, out)
    return {
        "overrides": list(overrides),
        "image_size": cfg.data.image_size,
        "batch_size": cfg.data.batch_size,
        "num_workers": cfg.data.num_workers,
        "settings": results,
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=3, help="epochs per setting (≥ 2 for a steady value)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args, overrides = parser.parse_known_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    result = time_cache(overrides, args.epochs)
    print(render(result))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
