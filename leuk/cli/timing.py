"""``python -m leuk.cli.timing data|preprocess ...``: timings of the data pipeline.

    python -m leuk.cli.timing data data=all data.root=../shared/data/all_taleqani \\
        data.image_size=224 data.num_workers=2 --epochs 3
    python -m leuk.cli.timing preprocess --preprocess aldl \\
        --images '../shared/data/all_taleqani/Original/*/*.jpg' --n 100 --fit 100

``data``: the decode-once cache, DataModule setup and a training epoch's loader with and without
it (``leuk.data.timing``); arguments other than its options are ``train.yaml`` overrides.
``preprocess``: a ``conf/preprocess`` option per image on real files (``leuk.preprocess.timing``).
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from leuk.cli.errors import user_errors
from leuk.config import config_dir
from leuk.data.timing import render, time_setting
from leuk.preprocess.timing import Timing, load_preprocess, pick_images, time_preprocess


def compose_train(overrides: Sequence[str], output_dir: Path) -> DictConfig:
    """``train.yaml`` with ``overrides``, outside a Hydra run (the run folder set by hand)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def time_cache(overrides: Sequence[str], epochs: int) -> dict[str, Any]:
    """The three cache settings of ``leuk.data.timing``, each from scratch, in a temporary cache."""
    from leuk.composition import build_datamodule

    with tempfile.TemporaryDirectory(prefix="leuk-timing-") as tmp:
        base = [*overrides, f"data.cache_dir={tmp}/decoded"]
        out = Path(tmp) / "run"
        settings = {
            "no cache (data.cache=none)": "none",
            "disk cache, first run (decodes)": "disk",
            "disk cache, reused": "disk",  # the same folder: setup reads what the run above wrote
        }
        results = {}
        for name, cache in settings.items():
            cfg = compose_train([*base, f"data.cache={cache}"], out)
            results[name] = time_setting(lambda cfg=cfg: build_datamodule(cfg), epochs)
        cfg = compose_train(base, out)
    return {
        "overrides": list(overrides),
        "image_size": cfg.data.image_size,
        "batch_size": cfg.data.batch_size,
        "num_workers": cfg.data.num_workers,
        "settings": results,
    }


def _data(args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    if args.epochs < 1:
        raise SystemExit("--epochs must be at least 1")
    result = time_cache(overrides, args.epochs)
    print(render(result))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    return result


def _preprocess(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Timing:
    files = glob.glob(str(Path(args.images).expanduser()))
    if len(files) < args.n + args.fit:
        parser.error(f"{len(files)} files match {args.images!r}; --n + --fit needs {args.n + args.fit}")
    timed, fit = pick_images(files, args.n, args.fit)
    result = time_preprocess(load_preprocess(args.preprocess, args.set), timed, fit, args.preprocess)
    print(json.dumps(asdict(result), indent=2))
    return result


def parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The command's parser and its two subcommands' parsers."""
    top = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="what", required=True)
    data = sub.add_parser("data", help="the decode cache: setup and loader epochs, with and without it")
    data.add_argument("--epochs", type=int, default=3, help="epochs per setting (≥ 2 for a steady value)")
    data.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    pre = sub.add_parser("preprocess", help="a preprocess config per image on real files")
    pre.add_argument("--preprocess", default="aldl", help="a conf/preprocess option")
    pre.add_argument("--images", required=True, help="glob of the image files")
    pre.add_argument("--n", type=int, default=100, help="images to time")
    pre.add_argument("--fit", type=int, default=100, help="other images the fitted steps learn from")
    pre.add_argument("--set", nargs="*", default=[], help="overrides such as steps.lesion.threshold=otsu")
    return top, {"data": data, "preprocess": pre}


def run(argv: Sequence[str] | None = None) -> dict[str, Any] | Timing:
    """Parse ``argv`` and time; the result (the data figures, or the preprocessing ``Timing``)."""
    top, sub = parsers()
    args, rest = top.parse_known_args(argv)
    if args.what == "data":
        return _data(args, rest)
    if rest:
        sub["preprocess"].error(f"unrecognized arguments: {' '.join(rest)}")
    return _preprocess(args, sub["preprocess"])


def main(argv: Sequence[str] | None = None) -> int:
    with user_errors("leuk-timing"):
        run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
