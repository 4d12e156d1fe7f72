"""Time a preprocess config per image on real files (the ALDL paper reports 4.25 s per image).

    python -m leuk.preprocess.timing --preprocess aldl \\
        --images '../shared/data/all_taleqani/Original/*/*.jpg' --n 100 --fit 100

Images are spread evenly over the sorted matches; the fitted steps learn from ``--fit`` other images
(as from a training split), then each of the ``--n`` timed images is decoded and preprocessed in
one thread, decoding timed apart.
"""

from __future__ import annotations

import argparse
import glob
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import yaml
from omegaconf import OmegaConf
from PIL import Image

from leuk.config import config_dir
from leuk.preprocess.pipeline import PreprocessPipeline, build_preprocess


@dataclass
class Timing:
    preprocess: str
    n_images: int
    n_fit_images: int
    fit_seconds: float
    decode_ms_per_image: float
    preprocess_ms_per_image: float
    preprocess_ms_p95: float
    stats: dict


def load_preprocess(name: str, overrides: Sequence[str] = ()) -> PreprocessPipeline:
    """The pipeline of ``conf/preprocess/<name>.yaml``, with dotted ``key=value`` overrides."""
    cfg = OmegaConf.load(config_dir() / "preprocess" / f"{name}.yaml")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value")
        # update(), not merge(): a dotlist cannot address a list element such as steps.2.
        OmegaConf.update(cfg, key, yaml.safe_load(value), merge=False)
    return build_preprocess(cfg.get("steps"))


def _read(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def time_preprocess(
    pipeline: PreprocessPipeline, paths: Sequence[str], fit_paths: Sequence[str], name: str = ""
) -> Timing:
    start = time.perf_counter()
    pipeline.fit(_read(p) for p in fit_paths)
    fit_seconds = time.perf_counter() - start
    decode, work = [], []
    for p in paths:
        t0 = time.perf_counter()
        image = _read(p)
        t1 = time.perf_counter()
        pipeline(image)
        t2 = time.perf_counter()
        decode.append(t1 - t0)
        work.append(t2 - t1)
    return Timing(
        preprocess=name,
        n_images=len(paths),
        n_fit_images=len(fit_paths) if pipeline.needs_fit else 0,
        fit_seconds=round(fit_seconds, 3),
        decode_ms_per_image=round(1000 * float(np.mean(decode)), 3),
        preprocess_ms_per_image=round(1000 * float(np.mean(work)), 3),
        preprocess_ms_p95=round(1000 * float(np.percentile(work, 95)), 3),
        stats=pipeline.stats(),
    )


def main(argv: Sequence[str] | None = None) -> Timing:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preprocess", default="aldl", help="a conf/preprocess option")
    parser.add_argument("--images", required=True, help="glob of the image files")
    parser.add_argument("--n", type=int, default=100, help="images to time")
    parser.add_argument("--fit", type=int, default=100, help="other images the fitted steps learn from")
    parser.add_argument("--set", nargs="*", default=[], help="overrides such as steps.2.threshold=otsu")
    args = parser.parse_args(argv)
    files = sorted(glob.glob(str(Path(args.images).expanduser())))
    if len(files) < args.n + args.fit:
        parser.error(f"{len(files)} files match {args.images!r}; --n + --fit needs {args.n + args.fit}")
    # Evenly spread over the sorted files (every class folder), then dealt at random (seed 0).
    picked = np.random.default_rng(0).permutation(
        np.linspace(0, len(files) - 1, args.n + args.fit).astype(int)
    )
    timed = [files[i] for i in picked[: args.n]]
    fit = [files[i] for i in picked[args.n :]]
    result = time_preprocess(load_preprocess(args.preprocess, args.set), timed, fit, args.preprocess)
    print(json.dumps(asdict(result), indent=2))
    return result


if __name__ == "__main__":
    main()
