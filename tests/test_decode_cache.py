"""The decode cache: keyed on content and on the code and libraries that make the pixels; a damaged
entry is rebuilt (with a log line naming it), never served."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leuk.data import decode
from leuk.data.decode import decode_all

SIZE = 16  # the decoded size; the files are 24 px, so the resize runs too


def write_images(folder: Path, n: int = 4, seed: int = 0) -> list[str]:
    """``n`` 24 px BMPs of random colour (BMP: the file size depends only on the dimensions)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"img_{i}.bmp"
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def fresh_pixels(paths: list[str]) -> np.ndarray:
    return np.stack([decode.decode_file(p, SIZE) for p in paths])


def cached(paths: list[str], cache: Path) -> decode.DecodedImages:
    return decode_all(paths, SIZE, mode="disk", cache_dir=cache, source_key="t", num_threads=1)


def entry(cache: Path) -> Path:
    (folder,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    return folder


def test_replaced_image_with_same_size_and_mtime_is_decoded_again(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "img")
    first = cached(paths, tmp_path / "cache")
    before = os.stat(paths[0])
    Image.fromarray(np.full((24, 24, 3), 200, np.uint8)).save(paths[0])
    os.utime(paths[0], ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(paths[0])
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)

    second = cached(paths, tmp_path / "cache")
    assert not second.from_cache
    assert second.sha256[0] != first.sha256[0] and second.sha256[1:] == first.sha256[1:]
    assert np.array_equal(np.asarray(second.images), fresh_pixels(paths))
    assert cached(paths, tmp_path / "cache").from_cache  # the new content is cached in its turn


def _truncate(folder: Path) -> Path:
    npy = folder / "images.npy"
    data = npy.read_bytes()
    npy.write_bytes(data[: len(data) // 2])
    return npy


def _zero_pixels(folder: Path) -> Path:
    # Full length, right header, every pixel zero: what an unfinished memmap looks like.
    npy = folder / "images.npy"
    images = np.load(npy, mmap_mode="r+")
    images[:] = 0
    images.flush()
    del images
    return npy


def _garble_header(folder: Path) -> Path:
    npy = folder / "images.npy"
    data = bytearray(npy.read_bytes())
    data[:16] = b"x" * 16
    npy.write_bytes(bytes(data))
    return npy


def _drop_marker(folder: Path) -> Path:
    # A folder without its metadata is a write that never finished.
    (folder / "meta.json").unlink()
    return folder


def _garble_meta(folder: Path) -> Path:
    meta = folder / "meta.json"
    meta.write_text(meta.read_text()[:40])
    return meta


def _wrong_meta(folder: Path) -> Path:
    meta = folder / "meta.json"
    meta.write_text(json.dumps({"n": 4, "size": SIZE}))
    return meta


@pytest.mark.parametrize(
    "damage", [_truncate, _zero_pixels, _garble_header, _drop_marker, _garble_meta, _wrong_meta]
)
def test_damaged_entry_is_rebuilt_with_a_log_line(tmp_path: Path, caplog, damage) -> None:
    paths = write_images(tmp_path / "img")
    cache = tmp_path / "cache"
    cached(paths, cache)
    damaged = damage(entry(cache))

    with caplog.at_level(logging.WARNING, logger="leuk.data.decode"):
        rebuilt = cached(paths, cache)
    assert not rebuilt.from_cache
    assert any(str(damaged) in r.getMessage() for r in caplog.records), caplog.text
    pixels = np.asarray(rebuilt.images)
    assert pixels.any() and np.array_equal(pixels, fresh_pixels(paths))

    again = cached(paths, cache)  # the rebuilt entry is whole: the run after is a plain hit
    assert again.from_cache and np.array_equal(np.asarray(again.images), fresh_pixels(paths))


def test_code_and_library_fingerprint_is_part_of_the_key(tmp_path: Path, monkeypatch) -> None:
    paths = write_images(tmp_path / "img")
    cache = tmp_path / "cache"
    cached(paths, cache)
    assert cached(paths, cache).from_cache
    monkeypatch.setattr(decode, "code_fingerprint", lambda transform=None: "other code")
    assert not cached(paths, cache).from_cache


def test_fingerprint_follows_library_versions_and_the_transform_code(monkeypatch) -> None:
    from leuk.preprocess.pipeline import PreprocessPipeline

    base = decode.code_fingerprint()
    assert base == decode.code_fingerprint()  # deterministic
    assert decode.code_fingerprint(PreprocessPipeline()) != base  # the preprocessing code joins it
    real = decode.library_versions
    monkeypatch.setattr(
        decode, "library_versions", lambda transform=None: {**real(transform), "pillow": "0.0"}
    )
    assert decode.code_fingerprint() != base


def test_stale_temp_folders_of_dead_writers_are_removed(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "img")
    cache = tmp_path / "cache"
    cache.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(done.stdout)
    host = socket.gethostname()
    stale = cache / f".tmp_{host}_{dead_pid}_abc"
    live = cache / f".tmp_{host}_{os.getpid()}_abc"  # a writer still at work: left alone
    stale.mkdir()
    live.mkdir()
    cached(paths, cache)
    assert not stale.exists() and live.exists()


def _dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(done.stdout)


def _age(path: Path, days: float) -> None:
    """Make ``path`` and the files in it look untouched for ``days``."""
    then = time.time() - days * 24 * 3600
    for p in [*path.iterdir(), path]:
        os.utime(p, (then, then))


def test_temp_folders_no_live_writer_owns_are_removed_whoever_wrote_them(tmp_path: Path) -> None:
    """Another machine's writer (a shared cache) is known only by its folder's age: untouched for
    days, it is gone; one at work now is left alone. A pid of this machine that runs again (since
    given to another process) does not keep a folder untouched for days either."""
    paths = write_images(tmp_path / "img")
    cache = tmp_path / "cache"
    host = socket.gethostname()
    folders = {
        "other_machine_old": cache / ".tmp_othermachine_123_abc",
        "other_machine_writing": cache / ".tmp_othermachine_456_abc",
        "pid_reused": cache / f".tmp_{host}_{os.getpid()}_old",
        "older_naming": cache / ".tmp_k3j4x9",
    }
    for folder in folders.values():
        folder.mkdir(parents=True)
        (folder / "images.npy").write_bytes(b"partial")
    for name in ("other_machine_old", "pid_reused", "older_naming"):
        _age(folders[name], days=3)
    cached(paths, cache)
    left = {name for name, folder in folders.items() if folder.exists()}
    assert left == {"other_machine_writing"}


def test_synthetic_generation_removes_the_temp_folders_of_killed_writers(tmp_path: Path) -> None:
    from leuk.data.synthetic import SyntheticSpec, generate_dataset

    root = tmp_path / "synthetic"
    dead = root / f".tmp_{socket.gethostname()}_{_dead_pid()}_x"
    old = root / ".tmp_abcd1234"  # the name synthetic data used before: known by age only
    for folder in (dead, old):
        folder.mkdir(parents=True)
        (folder / "spec.json").write_text("{")
    _age(old, days=3)
    target = generate_dataset(root, SyntheticSpec(images_per_class=1, size=32, seed=0, fmt="png"))
    assert (target / "spec.json").is_file()
    assert not dead.exists() and not old.exists()
    assert [p.name for p in root.iterdir()] == [target.name]


def test_hashes_from_an_earlier_pass_are_not_computed_again(tmp_path: Path, monkeypatch) -> None:
    """The preprocessing pass reuses setup's hashes: a hit reads no image file."""
    paths = write_images(tmp_path / "img")
    first = cached(paths, tmp_path / "cache")

    def no_read(path: str) -> str:
        raise AssertionError(f"{path} was hashed again")

    monkeypatch.setattr(decode, "_hash_file", no_read)
    again = decode_all(
        paths, SIZE, mode="disk", cache_dir=tmp_path / "cache", source_key="t", sha256=first.sha256
    )
    assert again.from_cache and again.sha256 == first.sha256
    with pytest.raises(ValueError, match="2 hashes for 4 paths"):
        decode_all(paths, SIZE, mode="disk", cache_dir=tmp_path / "cache", sha256=first.sha256[:2])


def test_a_writer_that_finishes_second_uses_the_first_ones_entry(tmp_path: Path, monkeypatch) -> None:
    """Two ranks decoding at once: the second rename fails, and that rank reads the first's copy."""
    paths = write_images(tmp_path / "img")
    cache = tmp_path / "cache"
    cached(paths, cache)
    real_load, calls = decode._load, []

    def miss_first(*args, **kwargs):
        calls.append(args[0])
        return None if len(calls) == 1 else real_load(*args, **kwargs)

    monkeypatch.setattr(decode, "_load", miss_first)
    second = cached(paths, cache)
    assert len(calls) == 2 and not second.from_cache
    assert np.array_equal(np.asarray(second.images), fresh_pixels(paths))
    assert [p.name for p in cache.iterdir()] == [entry(cache).name]  # no temporary folder left
