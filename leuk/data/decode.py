"""Decode each image once: to RGB uint8 at the run's size, with its content and perceptual hashes.

Every image leuk reads goes through ``open_rgb``: images of more than 8 bits per sample (16-bit
microscope PNGs and TIFFs) are scaled to 8 bits by their bit depth (``to_rgb``), never clipped.

The result is kept in RAM or in a memory-mapped ``.npy`` file under the cache folder. A disk entry
is keyed by what makes its pixels: the files' content (their SHA-256 hashes, in order, the same
hashes that grouping uses), the size, the source and preprocessing keys, and a fingerprint of the
code and library versions that decode and preprocess (``code_fingerprint``). An entry is written
in a temporary folder, its metadata (with pixel checksums) last, and published by one rename; one
that is damaged later is found on loading, logged and rebuilt. The temporary folders that killed
writers leave are removed by the next run (``leuk.utils.temp_dirs``: a dead pid on this machine, or
a day untouched).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import logging
import os
import shutil
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import imagehash
import numpy as np
from PIL import Image, UnidentifiedImageError, features

from leuk.data.sources import DataError
from leuk.utils.temp_dirs import make_temp_dir, remove_stale_temp_dirs

log = logging.getLogger(__name__)

CACHE_MODES = ("memory", "disk", "none")
# Distributions whose versions can change the cached pixels or hashes: Pillow (codecs, resize),
# numpy, ImageHash (the dhash kept with the pixels); and those the preprocessing steps compute with.
DECODE_LIBRARIES = ("pillow", "numpy", "imagehash")
PREPROCESS_LIBRARIES = (
    "scikit-image",
    "scipy",
    "opencv-python",
    "opencv-python-headless",
    "opencv-contrib-python",
    "opencv-contrib-python-headless",
)
# Pillow's codec libraries that decode lossy formats (lossless ones decode the same everywhere).
CODEC_FEATURES = ("jpg", "libjpeg_turbo")
# Rows per pixel checksum: small enough to check in parallel, large enough to keep the list short.
CHECKSUM_ROWS = 256
# Pillow's integer modes of more than 8 bits per sample (16-bit grayscale PNG/TIFF, 32-bit TIFF).
HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
TIFF_BITS_PER_SAMPLE = 258


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


def bit_depth(im: Image.Image) -> int:
    """Bits per sample of a decoded image: 8 for Pillow's 8-bit modes (RGB, L, P, ...), 1 for
    mode ``1``; for the integer modes ``I;16*`` and ``I`` what a TIFF declares (BitsPerSample: a
    12-bit camera's file may say 12), else the container's 16 or 32; 32 for float (``F``)."""
    if im.mode == "1":
        return 1
    if im.mode == "F":
        return 32
    if im.mode in HIGH_DEPTH_MODES:
        container = 32 if im.mode == "I" else 16
        declared = getattr(im, "tag_v2", {}).get(TIFF_BITS_PER_SAMPLE)
        if isinstance(declared, tuple):
            declared = declared[0] if declared else None
        if isinstance(declared, int) and 8 < declared <= container:
            return declared
        return container
    return 8


def to_rgb(im: Image.Image) -> Image.Image:
    """``im`` as 8-bit RGB. Integer images of more than 8 bits (16-bit microscope PNGs and TIFFs)
    are scaled by their bit depth, ``round(v * 255 / (2**bits - 1))`` (``v / 257`` for 16 bits),
    not by each image's own range, so that one brightness is one value in every image; Pillow's
    ``convert`` would clip them at 255 (a white image). Float images have no fixed range: refused."""
    if im.mode == "F":
        raise ValueError(
            "32-bit floating-point image (mode F): it has no fixed range to scale to 8 bits; "
            "save it as 8- or 16-bit integers"
        )
    if im.mode not in HIGH_DEPTH_MODES:
        return im.convert("RGB")
    top = (1 << bit_depth(im)) - 1
    values = np.clip(np.asarray(im).astype(np.int64), 0, top)
    scaled = ((values * 255 + top // 2) // top).astype(np.uint8)  # rounded, in integers
    return Image.fromarray(scaled, "L").convert("RGB")


def open_rgb(data: bytes | str | Path) -> Image.Image:
    """Open and fully decode an image as 8-bit RGB (``to_rgb``); raise ``ValueError`` on a corrupt
    or truncated file."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            im.load()  # forces the whole decode: a truncated file fails here, not later
            return to_rgb(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from exc


def is_blank(im: Image.Image) -> bool:
    """Whether every pixel has one colour (a failed acquisition, a placeholder): its difference
    hash is 0 for no reason of its content, so it never counts as a near-duplicate."""
    extrema = im.getextrema()
    bands = extrema if isinstance(extrema[0], tuple) else (extrema,)
    return all(lo == hi for lo, hi in bands)


def unreadable_reason(path: str, exc: Exception) -> str:
    """Why ``path`` could not be read, for the list of bad files (a broken link says where it points)."""
    if os.path.islink(path) and not os.path.exists(path):
        return f"broken symbolic link (to '{os.readlink(path)}', which does not exist)"
    return str(exc)


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
    """Pixels (N×size×size×3 uint8; rows of bad files are zeros) and hashes, in record order.

    ``dhash_valid[i]`` is False where image i's difference hash says nothing of its content (an
    unreadable or a blank image: both hash to 0): such an image never joins a near-duplicate group.
    """

    images: np.ndarray | None
    sha256: list[str]
    dhash: np.ndarray  # uint64 difference hashes
    bad: list[tuple[str, str]] = field(default_factory=list)
    from_cache: bool = False
    seconds: float = 0.0
    # What a preprocessing transform counted while it ran (kept in the cache with the pixels).
    stats: dict = field(default_factory=dict)
    dhash_valid: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.dhash_valid is None:
            self.dhash_valid = np.ones(len(self.dhash), dtype=bool)


def _dhash64(im: Image.Image) -> int:
    bits = imagehash.dhash(im, hash_size=8).hash.flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


# --------------------------------------------------------------------------- the key
@cache
def _distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def library_versions(transform: object | None = None) -> dict[str, str]:
    """Installed versions of the libraries that make the pixels (and Pillow's lossy codecs)."""
    names = DECODE_LIBRARIES + (PREPROCESS_LIBRARIES if transform is not None else ())
    out = {name: v for name in names if (v := _distribution_version(name)) is not None}
    for codec in CODEC_FEATURES:
        try:
            version = features.version(codec)
        except ValueError:  # a name this Pillow does not know
            version = None
        if version is not None:
            out[f"pillow:{codec}"] = version
    return out


def pixel_sources(transform: object | None = None) -> list[Path]:
    """The source files whose code makes the cached pixels: this module, and with a ``transform``
    the package (every module beside it) of the transform's class and of each of its ``steps``."""
    files = {Path(__file__).resolve()}
    if transform is not None:
        for obj in (transform, *getattr(transform, "steps", ())):
            module = sys.modules.get(type(obj).__module__)
            path = getattr(module, "__file__", None)
            if not path:
                continue  # defined in __main__ or a notebook: only its config key follows it
            path = Path(path).resolve()
            # A step calls helpers of the modules beside it, so the whole package counts.
            package = getattr(module, "__package__", None)
            files |= set(path.parent.glob("*.py")) if package else {path}
    return sorted(files)


def code_fingerprint(transform: object | None = None) -> str:
    """16 hex digits that change when the code or a library version that makes the pixels does."""
    h = hashlib.sha256()
    for path in pixel_sources(transform):
        h.update(f"{path.parent.name}/{path.name}:".encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    h.update(json.dumps(library_versions(transform), sort_keys=True).encode())
    return h.hexdigest()[:16]


def _cache_key(
    source_key: str, sha256: Sequence[str], size: int, transform_key: str, fingerprint: str
) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([fingerprint, source_key, size, transform_key, len(sha256)]).encode())
    for s in sha256:
        h.update(f"|{s}".encode())
    return h.hexdigest()[:24]


def _hash_file(path: str) -> str:
    # One read of the whole file: cheaper than hashlib.file_digest's chunked loop for small images.
    fd = os.open(path, os.O_RDONLY)
    try:
        return hashlib.sha256(os.read(fd, os.fstat(fd).st_size + 1)).hexdigest()
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- decode_all
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
    sha256: Sequence[str] | None = None,
) -> DecodedImages:
    """Decode (or load from the disk cache) every image of ``paths``.

    ``transform`` (deterministic preprocessing) runs on each full-resolution image before the
    resize, and ``transform_key`` (its config and fitted state) joins the cache key.
    ``mode="none"`` still reads every file once, for its hashes, but keeps no pixels.
    ``sha256``: the files' hashes as an earlier ``decode_all`` of the same paths in this run
    returned them, so that the disk cache's lookup does not read and hash every file again.
    """
    if mode not in CACHE_MODES:
        raise ValueError(f"data.cache must be one of {', '.join(CACHE_MODES)}; got '{mode}'")
    if sha256 is not None and len(sha256) != len(paths):
        raise ValueError(f"sha256 has {len(sha256)} hashes for {len(paths)} paths")
    start = time.perf_counter()
    threads = num_threads or min(8, os.cpu_count() or 1)
    if mode != "disk":
        result = _decode(paths, size, mode != "none", None, transform, threads)
        result.stats = transform_stats() if transform_stats is not None else {}
        result.seconds = time.perf_counter() - start
        _log_decoded(result, size)
        return result

    if cache_dir is None:
        raise ValueError("data.cache=disk needs data.cache_dir")
    root = Path(cache_dir).expanduser()
    remove_stale_temp_dirs(root)
    fingerprint = code_fingerprint(transform)
    hashes = list(sha256) if sha256 is not None else _hash_all(paths, threads)
    if all(hashes):
        key = _cache_key(source_key, hashes, size, transform_key, fingerprint)
        loaded = _load(root / key, key, hashes, size)
        if loaded is not None:
            loaded.seconds = time.perf_counter() - start
            log.info(
                "decoded images: cache hit %s (%d images, %.1f s)", root / key, len(paths), loaded.seconds
            )
            return loaded

    root.mkdir(parents=True, exist_ok=True)
    tmp_dir = make_temp_dir(root)
    try:
        result = _decode(paths, size, True, tmp_dir / "images.npy", transform, threads)
        result.stats = transform_stats() if transform_stats is not None else {}
        if result.bad:
            # Not cached while files are bad (the next run must see them again); keep the pixels.
            result.images = np.array(result.images)
        else:
            # The hashes of the bytes just decoded decide the key (a file may have changed since
            # the lookup), so an entry's name always matches its pixels.
            key = _cache_key(source_key, result.sha256, size, transform_key, fingerprint)
            result = _publish(result, tmp_dir, root / key, key, fingerprint, transform)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    result.seconds = time.perf_counter() - start
    _log_decoded(result, size)
    return result


def _log_decoded(result: DecodedImages, size: int) -> None:
    log.info(
        "decoded %d images at %d px in %.1f s (%d unreadable)",
        len(result.sha256),
        size,
        result.seconds,
        len(result.bad),
    )


def _hash_all(paths: Sequence[str], threads: int) -> list[str]:
    """SHA-256 of every file ("" where it cannot be read: the decode pass reports that file).

    One contiguous slice per thread (hashlib and reads release the GIL): a task per file costs as
    much CPU in thread hand-offs as the hashing itself.
    """

    def one(path: str) -> str:
        try:
            return _hash_file(path)
        except OSError:
            return ""

    n = len(paths)
    slices = [paths[i * n // threads : (i + 1) * n // threads] for i in range(threads)]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        parts = list(pool.map(lambda part: [one(p) for p in part], slices))
    return [h for part in parts for h in part]


def _decode(
    paths: Sequence[str],
    size: int,
    keep_pixels: bool,
    memmap_path: Path | None,
    transform: Callable[[np.ndarray], np.ndarray] | None,
    threads: int,
) -> DecodedImages:
    n = len(paths)
    images: np.ndarray | None
    if memmap_path is not None:
        images = np.lib.format.open_memmap(memmap_path, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    elif keep_pixels:
        images = np.zeros((n, size, size, 3), dtype=np.uint8)
    else:
        images = None
    sha = [""] * n
    dh = np.zeros(n, dtype=np.uint64)
    valid = np.zeros(n, dtype=bool)
    bad: list[tuple[str, str]] = []

    def work(i: int) -> None:
        path = paths[i]
        try:
            data = Path(path).read_bytes()
            sha[i] = hashlib.sha256(data).hexdigest()
            im = open_rgb(data)
            dh[i] = _dhash64(im)
            valid[i] = not is_blank(im)
            if images is not None:
                if transform is not None:
                    im = Image.fromarray(transform(np.asarray(im)))
                images[i] = resize_rgb(im, size)
        except (OSError, ValueError) as exc:
            bad.append((path, unreadable_reason(path, exc)))

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(work, range(n)))
    bad.sort()
    return DecodedImages(images, sha, dh, bad, dhash_valid=valid)


# --------------------------------------------------------------------------- the entry on disk
def _checksums(images: np.ndarray) -> list[int]:
    """CRC-32 of each block of ``CHECKSUM_ROWS`` rows (zlib releases the GIL: blocks run in parallel)."""
    blocks = [images[i : i + CHECKSUM_ROWS] for i in range(0, len(images), CHECKSUM_ROWS)]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda b: zlib.crc32(np.ascontiguousarray(b).data), blocks))


def _publish(
    result: DecodedImages,
    tmp_dir: Path,
    folder: Path,
    key: str,
    fingerprint: str,
    transform: object | None,
) -> DecodedImages:
    """Write the metadata (the completion marker) last, then move the entry into place in one rename."""
    images = result.images
    assert isinstance(images, np.memmap)
    images.flush()
    n, size = len(result.sha256), images.shape[1]
    meta = {
        "key": key,
        "n": n,
        "size": size,
        "sha256": result.sha256,
        "dhash": [int(x) for x in result.dhash],
        "dhash_valid": [bool(x) for x in result.dhash_valid],
        "stats": result.stats,
        "fingerprint": fingerprint,
        "libraries": library_versions(transform),
        "images_bytes": (tmp_dir / "images.npy").stat().st_size,
        "checksum_rows": CHECKSUM_ROWS,
        "images_crc32": _checksums(images),
    }
    del images
    result.images = None
    with open(tmp_dir / "meta.json", "w") as f:
        json.dump(meta, f)
        f.flush()
        os.fsync(f.fileno())
    # Kept open across the rename (same file): the pixels to fall back on if the published entry
    # is another process's and that one is damaged.
    own = np.load(tmp_dir / "images.npy", mmap_mode="r")
    try:
        os.rename(tmp_dir, folder)
    except OSError:
        # Another process (a DDP rank, a parallel job) finished first: use its copy.
        loaded = _load(folder, key, result.sha256, size)
        if loaded is not None:
            loaded.from_cache = False
            return loaded
        log.warning("the decoded-image cache %s could not be replaced: using this run's pixels", folder)
    result.images = own
    return result


EntryT = TypeVar("EntryT")


class _Damaged(Exception):
    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason}")


def _load_entry(folder: Path, read: Callable[[Path], EntryT], what: str) -> EntryT | None:
    """``read(folder)`` if the entry there is whole; a damaged one is logged and removed (the
    caller rebuilds it)."""
    if not folder.exists():
        return None
    try:
        return read(folder)
    except _Damaged as exc:
        log.warning("%s cache entry damaged, rebuilding it: %s (%s)", what, exc.path, exc.reason)
        shutil.rmtree(folder, ignore_errors=True)
        return None


def _load(folder: Path, key: str, sha256: Sequence[str], size: int) -> DecodedImages | None:
    """The entry at ``folder`` if it is whole and holds these files' pixels."""
    return _load_entry(folder, lambda f: _read_entry(f, key, sha256, size), "decoded-image")


def _read_meta(folder: Path, key: str, sha256: Sequence[str], size: int) -> tuple[Path, dict[str, Any]]:
    """An entry's ``meta.json`` (written last, so its presence marks a finished write), checked
    against the entry it should describe."""
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise _Damaged(folder, "no meta.json: its write never finished")
    try:
        meta: Any = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _Damaged(meta_path, f"unreadable metadata: {exc}") from exc
    expected = {
        "key": key,
        "n": len(sha256),
        "size": size,
        "sha256": list(sha256),
        "checksum_rows": CHECKSUM_ROWS,
    }
    wrong = (
        [k for k, v in expected.items() if meta.get(k) != v]
        if isinstance(meta, dict)
        else ["(not an object)"]
    )
    if wrong:
        raise _Damaged(meta_path, f"metadata does not match this entry: {', '.join(wrong)}")
    return meta_path, meta


def _read_entry(folder: Path, key: str, sha256: Sequence[str], size: int) -> DecodedImages:
    npy = folder / "images.npy"
    meta_path, meta = _read_meta(folder, key, sha256, size)
    n = len(sha256)
    if not (
        isinstance(meta.get("dhash"), list)
        and len(meta["dhash"]) == n
        and isinstance(meta.get("dhash_valid"), list)
        and len(meta["dhash_valid"]) == n
        and isinstance(meta.get("images_bytes"), int)
        and isinstance(meta.get("images_crc32"), list)
        and isinstance(meta.get("stats", {}), dict)
    ):
        raise _Damaged(
            meta_path, "metadata does not match this entry: dhash/dhash_valid/images_bytes/images_crc32/stats"
        )
    try:
        actual = npy.stat().st_size
    except OSError as exc:
        raise _Damaged(npy, f"missing: {exc}") from exc
    if actual != meta["images_bytes"]:
        raise _Damaged(npy, f"{actual} bytes, expected {meta['images_bytes']} (truncated or overwritten)")
    try:
        images = np.load(npy, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise _Damaged(npy, f"unreadable header: {exc}") from exc
    if images.dtype != np.uint8 or images.shape != (n, size, size, 3):
        raise _Damaged(npy, f"holds {images.dtype} {images.shape}, expected uint8 {(n, size, size, 3)}")
    if _checksums(images) != meta["images_crc32"]:
        raise _Damaged(npy, "pixel checksum mismatch (overwritten or never finished)")
    return DecodedImages(
        images,
        list(sha256),
        np.asarray(meta["dhash"], dtype=np.uint64),
        [],
        from_cache=True,
        stats=meta.get("stats", {}),
        dhash_valid=np.asarray(meta["dhash_valid"], dtype=bool),
    )


# --------------------------------------------------------------------------- per-lesion patches
@dataclass
class DecodedPatches:
    """Several patches per image (ALDL's lesion crops): a flat P×size×size×3 uint8 array and, per
    patch, the index of its image (``owner``, non-decreasing: an image's patches are contiguous)."""

    images: np.ndarray
    owner: np.ndarray
    from_cache: bool = False
    seconds: float = 0.0
    stats: dict = field(default_factory=dict)


def decode_patches(
    paths: Sequence[str],
    size: int,
    transform: Any,
    *,
    sha256: Sequence[str],
    mode: str = "memory",
    cache_dir: str | Path | None = None,
    source_key: str = "",
    transform_key: str = "",
    transform_stats: Callable[[], dict] | None = None,
    num_threads: int | None = None,
) -> DecodedPatches:
    """Every patch that ``transform.patches(image)`` gives for each image of ``paths``, resized
    to ``size``, kept in RAM (``mode="memory"``) or in a disk entry beside ``decode_all``'s
    (``mode="disk"``: ``patches.npy`` + ``owner.npy``, keyed and checked as those are).

    ``sha256``: the files' hashes (from ``decode_all``), which key the disk entry.
    """
    if mode not in ("memory", "disk"):
        raise ValueError(
            f"per-lesion patches are decoded once and cached: data.cache=memory or disk, not '{mode}'"
        )
    if len(sha256) != len(paths):
        raise ValueError(f"sha256 has {len(sha256)} hashes for {len(paths)} paths")
    start = time.perf_counter()
    threads = num_threads or min(8, os.cpu_count() or 1)
    root = folder = key = None
    fingerprint = code_fingerprint(transform)
    if mode == "disk":
        if cache_dir is None:
            raise ValueError("data.cache=disk needs data.cache_dir")
        root = Path(cache_dir).expanduser()
        remove_stale_temp_dirs(root)
        # "patches|" keeps this entry apart from decode_all's, whose folder holds one image per file.
        key = _cache_key(source_key, sha256, size, f"patches|{transform_key}", fingerprint)
        folder = root / key
        loaded = _load_patches(folder, key, sha256, size)
        if loaded is not None:
            loaded.seconds = time.perf_counter() - start
            log.info(
                "lesion patches: cache hit %s (%d images, %d patches, %.1f s)",
                folder,
                len(paths),
                len(loaded.owner),
                loaded.seconds,
            )
            return loaded

    per_image: list[list[np.ndarray] | None] = [None] * len(paths)
    bad: list[tuple[str, str]] = []

    def work(i: int) -> None:
        try:
            im = open_rgb(paths[i])
            per_image[i] = [resize_rgb(Image.fromarray(p), size) for p in transform.patches(np.asarray(im))]
        except (OSError, ValueError) as exc:
            bad.append((paths[i], unreadable_reason(paths[i], exc)))

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(work, range(len(paths))))
    if bad:
        raise BadImagesError(sorted(bad))
    counts = np.array([len(p or ()) for p in per_image], dtype=np.int64)
    owner = np.repeat(np.arange(len(paths), dtype=np.int64), counts)
    stats = transform_stats() if transform_stats is not None else {}
    shape = (int(counts.sum()), size, size, 3)
    tmp_dir = None
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
        tmp_dir = make_temp_dir(root)
    try:
        images = (
            np.lib.format.open_memmap(tmp_dir / "patches.npy", mode="w+", dtype=np.uint8, shape=shape)
            if tmp_dir is not None
            else np.empty(shape, dtype=np.uint8)
        )
        row = 0
        for i, patches in enumerate(per_image):
            for patch in patches or ():
                images[row] = patch
                row += 1
            per_image[i] = None  # freed as it is copied: the peak stays near one copy
        result = DecodedPatches(images, owner, stats=stats)
        if tmp_dir is not None:
            assert folder is not None and key is not None
            result = _publish_patches(result, tmp_dir, folder, key, sha256, fingerprint, transform)
    finally:
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    result.seconds = time.perf_counter() - start
    log.info(
        "lesion patches: %d from %d images at %d px in %.1f s", len(owner), len(paths), size, result.seconds
    )
    return result


def _publish_patches(
    result: DecodedPatches,
    tmp_dir: Path,
    folder: Path,
    key: str,
    sha256: Sequence[str],
    fingerprint: str,
    transform: object,
) -> DecodedPatches:
    """As ``_publish``: the metadata last, then one rename (another writer's entry wins a race)."""
    images = result.images
    assert isinstance(images, np.memmap)
    images.flush()
    np.save(tmp_dir / "owner.npy", result.owner)
    meta = {
        "key": key,
        "n": len(sha256),
        "n_patches": len(result.owner),
        "size": images.shape[1],
        "sha256": list(sha256),
        "stats": result.stats,
        "fingerprint": fingerprint,
        "libraries": library_versions(transform),
        "patches_bytes": (tmp_dir / "patches.npy").stat().st_size,
        "checksum_rows": CHECKSUM_ROWS,
        "patches_crc32": _checksums(images),
        "owner_crc32": zlib.crc32(np.ascontiguousarray(result.owner).data),
    }
    del images
    with open(tmp_dir / "meta.json", "w") as f:
        json.dump(meta, f)
        f.flush()
        os.fsync(f.fileno())
    own = np.load(tmp_dir / "patches.npy", mmap_mode="r")
    try:
        os.rename(tmp_dir, folder)
    except OSError:
        loaded = _load_patches(folder, key, sha256, meta["size"])
        if loaded is not None:
            loaded.from_cache = False
            return loaded
        log.warning("the lesion-patch cache %s could not be replaced: using this run's patches", folder)
    return DecodedPatches(own, result.owner, stats=result.stats)


def _load_patches(folder: Path, key: str, sha256: Sequence[str], size: int) -> DecodedPatches | None:
    return _load_entry(folder, lambda f: _read_patches(f, key, sha256, size), "lesion-patch")


def _read_patches(folder: Path, key: str, sha256: Sequence[str], size: int) -> DecodedPatches:
    npy, owner_npy = folder / "patches.npy", folder / "owner.npy"
    _, meta = _read_meta(folder, key, sha256, size)
    try:
        if npy.stat().st_size != meta.get("patches_bytes"):
            raise _Damaged(npy, "truncated or overwritten")
        images = np.load(npy, mmap_mode="r")
        owner = np.load(owner_npy)
    except (OSError, ValueError) as exc:
        raise _Damaged(folder, f"unreadable: {exc}") from exc
    n_patches = meta.get("n_patches")
    if images.dtype != np.uint8 or images.shape != (n_patches, size, size, 3) or owner.shape != (n_patches,):
        raise _Damaged(
            npy, f"holds {images.dtype} {images.shape} and {owner.shape} owners, expected {n_patches}"
        )
    if zlib.crc32(np.ascontiguousarray(owner).data) != meta.get("owner_crc32") or _checksums(
        images
    ) != meta.get("patches_crc32"):
        raise _Damaged(folder, "checksum mismatch (overwritten or never finished)")
    return DecodedPatches(images, owner.astype(np.int64), from_cache=True, stats=meta.get("stats", {}))
