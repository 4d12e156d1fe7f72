"""Images to predict, served to ``trainer.predict`` as training serves its test split.

``PredictionDataModule`` decodes each image once, as training does (``leuk.data.decode.decode_all``
with the run's preprocessing, before the resize), keeps the readable ones and lists the others
(``bad``: never lost silently), and serves ``(uint8 CHW, label)`` batches in file order. With
``noise_sigma``, batches are noisy copies (``add_noise``): the noise-robustness table goes through
the same ``trainer.predict`` as the clean predictions.

With a per-lesion preprocessing (ALDL, ``per_lesion: true``) each image is served as all of its
lesion patches, decoded as training decodes its test split (``decode_patches``), and ``owner``
maps each patch to its image: ``leuk.predictions.predict_probs`` then scores an image as the mean
of its patches' probabilities, as training's ``test_image/*`` metrics do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from leuk.data.decode import BadImagesError, decode_all, decode_patches

Preprocess = Callable[[np.ndarray], np.ndarray]


def add_noise(x: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Zero-mean Gaussian noise of ``sigma`` (0–255 scale), per pixel and channel, clipped to [0, 255].

    Drawn on the CPU from ``generator``, so a seed gives the same noise on any device.
    """
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float32)
    return (x.float() + sigma * noise).clamp_(0.0, 255.0)


class _Images(Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(np.ascontiguousarray(self.images[i])).permute(2, 0, 1), int(self.labels[i])


class _NoisyCollate:
    """Stacks a batch, then adds noise drawn per batch from one generator: the draws are those of
    noise added to each whole batch in order, whatever the image size."""

    def __init__(self, sigma: float, seed: int) -> None:
        self.sigma = sigma
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.stack([image for image, _ in items])
        y = torch.tensor([label for _, label in items], dtype=torch.int64)
        return add_noise(x, self.sigma, self.generator), y


class PredictionDataModule(L.LightningDataModule):
    """``paths`` (with ``labels`` where known, -1 otherwise) decoded at ``image_size`` through
    ``preprocess``; or, with ``images``, pixels decoded already (HWC uint8, e.g. a ``noisy`` copy).

    After ``setup()``: ``images`` (the samples served) and ``labels`` of the readable files,
    ``paths`` of those, ``positions`` (their indices in the paths given) and ``bad`` ((path, reason)
    of the others). ``owner``: None where each image is one sample; with per-lesion patches (or
    given ``images`` that are patches) each sample's index into ``paths``, non-decreasing.
    """

    def __init__(
        self,
        paths: Sequence[str],
        image_size: int,
        *,
        labels: Sequence[int] | np.ndarray | None = None,
        preprocess: Preprocess | None = None,
        batch_size: int = 32,
        noise_sigma: float | None = None,
        noise_seed: int = 0,
        images: np.ndarray | None = None,
        owner: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.all_paths = list(paths)
        self.image_size = image_size
        self.all_labels = (
            np.full(len(self.all_paths), -1, np.int64) if labels is None else np.asarray(labels, np.int64)
        )
        if len(self.all_labels) != len(self.all_paths):
            raise ValueError(f"{len(self.all_labels)} labels for {len(self.all_paths)} paths")
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.noise_sigma = noise_sigma
        self.noise_seed = noise_seed
        self._given = images
        self._given_owner = owner
        self.owner: np.ndarray | None = None
        self.images: np.ndarray = np.zeros((0, image_size, image_size, 3), np.uint8)
        self.labels: np.ndarray = np.zeros(0, np.int64)
        self.paths: list[str] = []
        self.positions: list[int] = []
        self.bad: list[tuple[str, str]] = []
        self._ready = False

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        if self._given is not None:
            self.images, self.positions = self._given, list(range(len(self.all_paths)))
            self.owner = self._given_owner
        elif self.all_paths and getattr(self.preprocess, "per_lesion", False):
            self._decode_patches()
        elif self.all_paths:
            decoded = decode_all(self.all_paths, self.image_size, mode="memory", transform=self.preprocess)
            assert decoded.images is not None
            self.bad = decoded.bad
            unreadable = {path for path, _ in decoded.bad}
            self.positions = [i for i, p in enumerate(self.all_paths) if p not in unreadable]
            self.images = decoded.images[self.positions]
        self.paths = [self.all_paths[i] for i in self.positions]
        self.labels = self.all_labels[self.positions]
        self._ready = True

    def _decode_patches(self) -> None:
        # A first pass without pixels finds the unreadable files (listed, not raised) and hashes.
        checked = decode_all(self.all_paths, self.image_size, mode="none")
        self.bad = list(checked.bad)
        while True:
            unreadable = {path for path, _ in self.bad}
            self.positions = [i for i, p in enumerate(self.all_paths) if p not in unreadable]
            if not self.positions:
                return
            try:
                patches = decode_patches(
                    [self.all_paths[i] for i in self.positions],
                    self.image_size,
                    self.preprocess,
                    sha256=[checked.sha256[i] for i in self.positions],
                )
            except BadImagesError as exc:
                # Readable files whose preprocessing failed: listed like unreadable ones, the
                # rest decoded again.
                self.bad = sorted(self.bad + exc.bad)
                continue
            self.images, self.owner = np.asarray(patches.images), patches.owner
            return

    @property
    def sample_labels(self) -> np.ndarray:
        """The label of each sample served: its image's."""
        return self.labels if self.owner is None else self.labels[self.owner]

    @property
    def pictures(self) -> np.ndarray:
        """One picture (HWC uint8) per image, for figures: the image, or its first patch (its
        largest lesion, as training's preview shows it)."""
        if self.owner is None:
            return self.images
        return self.images[np.searchsorted(self.owner, np.arange(len(self.labels)))]

    def noisy(self, sigma: float, seed: int) -> PredictionDataModule:
        """The same (set-up) images, served with Gaussian noise of ``sigma`` drawn from ``seed``."""
        self.setup()
        return PredictionDataModule(
            self.paths,
            self.image_size,
            labels=self.labels,
            batch_size=self.batch_size,
            noise_sigma=sigma,
            noise_seed=seed,
            images=self.images,
            owner=self.owner,
        )

    def predict_dataloader(self) -> DataLoader:
        self.setup()
        # In this process, in order: the noise generator starts afresh for every predict call.
        collate: Any = None if self.noise_sigma is None else _NoisyCollate(self.noise_sigma, self.noise_seed)
        return DataLoader(
            _Images(self.images, self.sample_labels),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=0,
            collate_fn=collate,
        )
