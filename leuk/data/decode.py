"""Decode each image once: to RGB uint8 at the run's size, with its content and perceptual hashes.

The result is kept in RAM or in a memory-mapped ``.npy`` file under the cache folder, keyed by the
source, the files (path, size, mtime), the size and the version of this code, so later epochs and
later runs with the same key read pixels without touching a JPEG/BMP decoder.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, UnidentifiedImageError

from leuk.data.sources import DataError

log = logging.getLogger(__name__)

# Bump when decoding or hashing changes, so stale caches are not reused.
CACHE_VERSION = 1
CACHE_MODES = ("memory", "disk", "none")


class BadImagesError(DataError):
    """Images that could not be decoded, every one of them listed."""

    def __init__(self, bad: Sequence[tuple[str, str]]) -> None:
        self.bad = list(bad)
        lines = "\n".join(f"  {path}: {reason}" for path, reason in self.bad[:50])
        more = f"\n  ... and {len(self.bad) - 50} more" if len(self.bad) > 50 else ""
        super().__init__(
            f"{len(self.bad)} image(s) could not be read:\n{lines}{more}\n"
            "Fix or remove them, or set data.skip_bad=true to leave them out (they are then counted "
            "in the log and metrics.json)."
        )


def open_rgb(data: bytes | str | Path) -> Image.Image:
    """Open and fully decode an image as RGB; raise ``ValueError`` on a corrupt or truncated file."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            im.load()  # forces the whole decode: a truncated file fails here, not later
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from exc


def resize_rgb(im: Image.Image, size: int) -> np.ndarray:
    """Resize to ``size``×``size`` with antialiased bilinear filtering; return HWC uint8."""
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.array(im, dtype=np.uint8)


def decode_file(
    path: str, size: int, transform: Callable[[np.ndarray], np.ndarray] | None = None
) -> np.ndarray:
    """One image at ``size``×``size``, preprocessed first if ``transform`` is given (used where
    nothing is cached, and by prediction)."""
    im = open_rgb(path)
    if transform is not None:
        im = Image.fromarray(transform(np.asarray(im)))
    return resize_rgb(im, size)


@dataclass
class DecodedImages:
    """Pixels (N×size×size×3 uint8; rows of bad files are zeros) and hashes, in record order."""

    images: np.ndarray | None
    sha256: list[str]
    dhash: np.ndarray  # uint64 difference hashes
    bad: list[tuple[str, str]] = field(default_factory=list)
    from_cache: bool = False
    seconds: float = 0.0
    # What a preprocessing transform counted while it ran (kept in the cache with the pixels).
    stats: dict = field(default_factory=dict)


def _dhash64(im: Image.Image) -> int:
    bits = imagehash.dhash(im, hash_size=8).hash.flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def _cache_key(source_key: str, paths: Sequence[str], size: int, transform_key: str = "") -> str:
    h = hashlib.sha1()
    h.update(f"v{CACHE_VERSION}|{source_key}|{size}|{transform_key}".encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"|{p}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def decode_all(
    paths: Sequence[str],
    size: int,
    *,
    mode: str = "memory",
    cache_dir: str | Path | None = None,
    source_key: str = "",
    num_threads: int | None = None,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    transform_key: str = "",
    transform_stats: Callable[[], dict] | None = None,
) -> DecodedImages:
    """Decode (or load from the disk cache) every image of ``paths``.

    ``transform`` (deterministic preprocessing) runs on each full-resolution image before the
    resize, and ``transform_key`` (its config and fitted state) joins the cache key.
    ``mode="none"`` still reads every file once, for its hashes, but keeps no pixels.
    """
    if mode not in CACHE_MODES:
        raise ValueError(f"data.cache must be one of {', '.join(CACHE_MODES)}; got '{mode}'")
    start = time.perf_counter()
    folder = None
    if mode == "disk":
        if cache_dir is None:
            raise ValueError("data.cache=disk needs data.cache_dir")
        folder = Path(cache_dir).expanduser() / _cache_key(source_key, paths, size, transform_key)
        loaded = _load(folder, len(paths))
        if loaded is not None:
            loaded.seconds = time.perf_counter() - start
            log.info("decoded images: cache hit %s (%d images)", folder, len(paths))
            return loaded

    n = len(paths)
    keep_pixels = mode != "none"
    tmp_dir = None
    if mode == "disk":
        assert folder is not None
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = Path(tempfile.mkdtemp(prefix=".tmp_", dir=folder.parent))
        images = np.lib.format.open_memmap(
            tmp_dir / "images.npy", mode="w+", dtype=np.uint8, shape=(n, size, size, 3)
        )
    elif keep_pixels:
        images = np.zeros((n, size, size, 3), dtype=np.uint8)
    else:
        images = None
    sha = [""] * n
    dh = np.zeros(n, dtype=np.uint64)
    bad: list[tuple[str, str]] = []

    def work(i: int) -> None:
        path = paths[i]
        try:
            data = Path(path).read_bytes()
            sha[i] = hashlib.sha256(data).hexdigest()
            im = open_rgb(data)
            dh[i] = _dhash64(im)
            if images is not None:
                if transform is not None:
                    im = Image.fromarray(transform(np.asarray(im)))
                images[i] = resize_rgb(im, size)
        except (OSError, ValueError) as exc:
            bad.append((path, str(exc)))

    threads = num_threads or min(8, os.cpu_count() or 1)
    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(work, range(n)))
        bad.sort()
        stats = transform_stats() if transform_stats is not None else {}
        result = DecodedImages(images, sha, dh, bad, stats=stats)
        if mode == "disk" and not bad:
            assert tmp_dir is not None and folder is not None
            images.flush()
            del images
            (tmp_dir / "meta.json").write_text(
                json.dumps(
                    {"n": n, "size": size, "sha256": sha, "dhash": [int(x) for x in dh], "stats": stats}
                )
            )
            # Another process (a DDP rank, a parallel job) may have finished first: keep its copy.
            with contextlib.suppress(OSError):
                os.rename(tmp_dir, folder)
            loaded = _load(folder, n)
            if loaded is None:
                raise DataError(f"the decoded-image cache at {folder} could not be read back")
            result = loaded
            result.from_cache = False
        elif mode == "disk":
            # Not cached while files are bad (the next run must see them again); keep the pixels.
            result.images = np.array(images)
    finally:
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    result.seconds = time.perf_counter() - start
    log.info("decoded %d images at %d px in %.1f s (%d unreadable)", n, size, result.seconds, len(bad))
    return result


def _load(folder: Path, n: int) -> DecodedImages | None:
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("n") != n:
        return None
    images = np.load(folder / "images.npy", mmap_mode="r")
    return DecodedImages(
        images,
        meta["sha256"],
        np.asarray(meta["dhash"], dtype=np.uint64),
        [],
        from_cache=True,
        stats=meta.get("stats", {}),
    )
