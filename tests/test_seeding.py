"""The run seed controls augmentation: per sample, per worker and per epoch (issue 13, defect 3).

albumentations keeps its own random state, which global seeds do not touch; forked DataLoader
workers each inherit a copy of it. These tests read the random part of an augmentation back out of
the loader's batches (additive noise: batch minus the original image) and check that it repeats
with the seed and nowhere else, then that two short fits with the same seed and ``augmentation=mcb``
end with the same weights and metrics.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch

from leuk.composition import build_datamodule, build_module
from leuk.data.transforms import build_augmentation
from tests.helpers import TINY, compose_config, fit_two_short_epochs

# Noise small enough to match an output to its original image, large enough that two independent
# draws agree on few pixels (about one in eight); a replayed draw agrees on nearly all of them.
NOISE = [{"_target_": "leuk.preprocess.noise.AdditiveGaussianNoise", "sigma": 4.0, "p": 1.0}]
REPLAY = 0.5  # fraction of equal noise values above which two draws are the same stream


def _datamodule(tmp_path: Path, seed: int, workers: int, persistent: bool = False) -> Any:
    noise = ",".join(f"{k}:{v}" for k, v in NOISE[0].items())
    cfg = compose_config(
        [
            *TINY,
            f"seed={seed}",
            f"data.num_workers={workers}",
            f"data.persistent_workers={persistent}",
            f"augmentation.transforms=[{{{noise}}}]",
        ],
        output_dir=tmp_path,
    )
    dm = build_datamodule(cfg)
    dm.setup()
    return dm


def _epoch_noise(dm: Any, loader: Any, epoch: int | None) -> list[tuple[int, np.ndarray]]:
    """(decoded image index, noise map) for every training image the loader served in one epoch.

    ``epoch`` is passed to the sampler as Lightning's fit loop does; ``None`` iterates as a plain
    loop (``leuk.bench``, ``leuk.data.timing``) does, without telling the loader the epoch.
    """
    if epoch is not None:
        _set_sampler_epoch(loader, epoch)
    originals = np.asarray(dm.decoded.images).astype(np.int16)  # N, H, W, C
    served = []
    for x, _y in loader:
        for img in x.permute(0, 2, 3, 1).numpy().astype(np.int16):
            j = int(np.abs(originals - img).reshape(len(originals), -1).sum(1).argmin())
            served.append((j, img - originals[j]))
    assert sorted(j for j, _ in served) == sorted(int(i) for i in dm.train_indices)
    return served


def _same_stream(a: np.ndarray, b: np.ndarray) -> bool:
    return float((a == b).mean()) > REPLAY


def _replays(draws: list[np.ndarray]) -> list[tuple[int, int]]:
    return [
        (i, k)
        for i in range(len(draws))
        for k in range(i + 1, len(draws))
        if _same_stream(draws[i], draws[k])
    ]


@pytest.mark.parametrize(("workers", "persistent"), [(0, False), (2, False), (2, True)])
def test_no_two_draws_replay_one_stream_within_or_across_epochs(
    tmp_path: Path, workers: int, persistent: bool
) -> None:
    """Each image, each worker and each epoch draws its own augmentation: no worker repeats
    another's random stream, and epoch 2 does not repeat epoch 1."""
    dm = _datamodule(tmp_path, seed=7, workers=workers, persistent=persistent)
    loader = dm.train_dataloader()
    first = [n for _, n in _epoch_noise(dm, loader, 0)]
    assert not _replays(first), f"draws within epoch 1 repeat each other (num_workers={workers})"
    second = [n for _, n in _epoch_noise(dm, loader, 1)]
    across = [(i, k) for i, a in enumerate(first) for k, b in enumerate(second) if _same_stream(a, b)]
    assert not across, f"epoch 2 replays {len(across)} of epoch 1's draws (num_workers={workers})"
    # A plain loop that never names the epoch still gets a new draw each epoch.
    third = [n for _, n in _epoch_noise(dm, loader, None)]
    assert not any(_same_stream(a, b) for a in second for b in third)


def test_seed_fixes_each_images_augmentation_whatever_num_workers(tmp_path: Path) -> None:
    """Same seed: every image gets the same augmentation in the same epoch, with num_workers 0
    or 2, persistent or not. Another seed: other augmentations."""
    runs = {
        name: dict(_epoch_noise(dm, dm.train_dataloader(), 0))
        for name, dm in {
            "seed 3, 0 workers": _datamodule(tmp_path / "a", seed=3, workers=0),
            "seed 3, 0 workers again": _datamodule(tmp_path / "b", seed=3, workers=0),
            "seed 3, 2 persistent workers": _datamodule(tmp_path / "c", seed=3, workers=2, persistent=True),
            "seed 4, 0 workers": _datamodule(tmp_path / "d", seed=4, workers=0),
        }.items()
    }
    base = runs["seed 3, 0 workers"]
    for name in ("seed 3, 0 workers again", "seed 3, 2 persistent workers"):
        assert runs[name].keys() == base.keys()
        differ = [j for j in base if not np.array_equal(base[j], runs[name][j])]
        assert not differ, f"{name}: {len(differ)} of {len(base)} images augmented differently"
    other = runs["seed 4, 0 workers"]
    shared = base.keys() & other.keys()
    assert shared
    assert not any(_same_stream(base[j], other[j]) for j in shared), "seed 4 repeats seed 3's draws"


def test_augmentation_stream_differs_between_sibling_transforms() -> None:
    """Seeding albumentations' way (``Compose(seed=...)``) gives every transform its own copy of one
    stream, so two flips with p=0.5 would always fire together; leuk's seeding keeps them apart."""
    flips = [
        {"_target_": "albumentations.HorizontalFlip", "p": 0.5},
        {"_target_": "albumentations.VerticalFlip", "p": 0.5},
    ]
    pipeline = build_augmentation(flips)
    img = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    outcomes = {"none": img, "horizontal": img[:, ::-1], "vertical": img[::-1], "both": img[::-1, ::-1]}
    seen = set()
    for _ in range(64):
        out = pipeline(image=img)["image"]
        seen.update(name for name, expected in outcomes.items() if np.array_equal(out, expected))
    assert seen == set(outcomes), f"only {sorted(seen)} of the four flip combinations occur"


# ---------------------------------------------------------------------------- whole runs
class _LastMetrics(L.Callback):
    """The logged metrics at the end of every epoch, as plain floats."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epochs.append({k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1})


def _fit(tmp_path: Path, workers: int) -> tuple[list[dict[str, float]], dict[str, torch.Tensor]]:
    """Two short epochs of the tiny set with ``augmentation=mcb``, set up as ``leuk.train`` does:
    the metrics logged at each epoch's end and the final weights."""
    cfg = compose_config(
        [
            *TINY,
            "augmentation=mcb",
            # A small network keeps the test fast; dropout checks that the loaders leave the global
            # random stream (which dropout draws from) alone, whatever num_workers.
            "model=timm",
            "model.name=test_resnet",
            "model.arch.dropout=0.2",
            "seed=11",
            f"data.num_workers={workers}",
            f"data.persistent_workers={workers > 0}",
        ],
        output_dir=tmp_path,
    )
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    datamodule.setup()
    module = build_module(cfg, datamodule)
    recorder = _LastMetrics()
    fit_two_short_epochs(module, datamodule, recorder)
    return recorder.epochs, {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_same(a: tuple[list, dict], b: tuple[list, dict], what: str) -> None:
    epochs_a, weights_a = a
    epochs_b, weights_b = b
    assert len(epochs_a) == len(epochs_b) == 2 and epochs_a[-1]
    for e, (metrics_a, metrics_b) in enumerate(zip(epochs_a, epochs_b, strict=True)):
        assert metrics_a.keys() == metrics_b.keys()
        differ = [k for k in metrics_a if metrics_a[k] != metrics_b[k]]
        assert not differ, (
            f"{what}, epoch {e}: {len(differ)} of {len(metrics_a)} metrics differ, e.g. {differ[:4]}"
        )
    changed = [k for k in weights_a if not torch.equal(weights_a[k], weights_b[k])]
    assert not changed, (
        f"{what}: {len(changed)} of {len(weights_a)} weight tensors differ, e.g. {changed[:3]}"
    )


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread: on a shared, busy CPU two threads wait on each other far longer than
    the tiny network computes (20× slower measured on 2 loaded cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_same_seed_same_weights_and_metrics_with_augmentation(tmp_path: Path) -> None:
    """Two fits with one seed and ``augmentation=mcb`` agree bit for bit, with num_workers 0 and
    with 2 persistent workers, and (per-sample seeding) the two settings agree with each other."""
    plain = _fit(tmp_path, workers=0)
    _assert_same(plain, _fit(tmp_path, workers=0), "num_workers=0, same seed")
    workers = _fit(tmp_path, workers=2)
    _assert_same(workers, _fit(tmp_path, workers=2), "num_workers=2, same seed")
    _assert_same(plain, workers, "num_workers=0 against num_workers=2")
