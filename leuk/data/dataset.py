"""A map-style dataset over decoded images: a cache row (or a file) → augmentation → uint8 CHW tensor.

Images leave the loader as uint8: a quarter of the bytes of float32 to copy into pinned memory and
to the GPU. Scaling to [0, 1] and normalization happen on the device (``Classifier``).

Seeding. The training loader's ``EpochSampler`` runs in the main process and hands the dataset an
``(index, draw_seed)`` pair per item; the dataset reseeds the augmentation pipeline with
``draw_seed`` before augmenting. The seed of a draw depends only on the run seed, the epoch and the
draw's position in the epoch, never on which worker loads it. So, for one seed: every epoch has
its own augmentations, no two workers (or ranks) share a random stream, and a run's augmentations,
batches and order are the same bit for bit with ``num_workers`` 0, 2 or 8, persistent or not, and
after resuming at epoch k. What stays machine-dependent is the arithmetic itself (CPU vs GPU,
thread counts, non-deterministic kernels: ``trainer.deterministic``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from leuk.data.decode import decode_file
from leuk.data.transforms import seed_augmentation

# Seeds are those Lightning's seed_everything and numpy's legacy seeding accept.
MAX_SEED = int(np.iinfo(np.uint32).max)


class EpochSampler(Sampler[tuple[int, int]]):
    """The training order of each epoch, with one augmentation seed per draw: ``(index, draw_seed)``.

    Both come from ``(seed, epoch)`` alone: a permutation of the ``n`` items (``shuffle``), the
    items in order (``shuffle=False``), or, with ``weights``, ``n`` draws with replacement in
    proportion to them (``data.balance=weighted_sampler``). Lightning names the epoch through
    ``set_epoch`` before each one (also when resuming); a loop that never does gets epoch 0, 1, 2, …
    on successive passes.
    """

    def __init__(
        self, n: int, seed: int, shuffle: bool = True, weights: Sequence[float] | np.ndarray | None = None
    ) -> None:
        if not 0 <= seed <= MAX_SEED:
            raise ValueError(f"seed must be between 0 and {MAX_SEED}, got {seed}")
        if weights is not None and len(weights) != n:
            raise ValueError(f"{len(weights)} sampling weights for {n} items")
        self.n = n
        self.seed = seed
        self.shuffle = shuffle
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def draws(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Epoch ``epoch``'s item indices and the augmentation seed of each draw."""
        order_seq, draw_seq = np.random.SeedSequence([self.seed, epoch]).spawn(2)
        rng = np.random.default_rng(order_seq)
        if self.weights is not None:
            order = rng.choice(self.n, size=self.n, replace=True, p=self.weights / self.weights.sum())
        elif self.shuffle:
            order = rng.permutation(self.n)
        else:
            order = np.arange(self.n)
        return order, draw_seq.generate_state(self.n, np.uint64)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        self.epoch += 1  # the next pass is the next epoch unless set_epoch says otherwise
        order, draw_seeds = self.draws(epoch)
        return iter(zip(order.tolist(), draw_seeds.tolist(), strict=True))


class CachedImageDataset(Dataset):
    def __init__(
        self,
        indices: Sequence[int],
        labels: np.ndarray,
        images: np.ndarray | None,
        paths: Sequence[str],
        size: int,
        transform: Callable[..., dict] | None = None,
        extra_images: np.ndarray | None = None,
        preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.images = images
        self.paths = paths
        self.size = size
        self.transform = transform
        # Rows past the decoded images: balancing copies made after the split (training only).
        self.extra_images = extra_images
        self.n_decoded = len(paths)
        # Only without a pixel cache (data.cache=none): preprocessing then runs on every read.
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.indices)

    def image(self, i: int) -> np.ndarray:
        """The decoded (not augmented) HWC uint8 image of item ``i``."""
        j = int(self.indices[i])
        if j >= self.n_decoded:
            assert self.extra_images is not None
            return np.array(self.extra_images[j - self.n_decoded])
        if self.images is not None:
            # A copy: rows of a read-only memory map must not be handed to torch or albumentations.
            return np.array(self.images[j])
        return decode_file(self.paths[j], self.size, self.preprocess)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        """Item ``i`` augmented, given ``i`` or ``(i, draw_seed)`` (from ``EpochSampler``). A bare
        ``i`` continues the pipeline's own stream, as a direct call would."""
        i, draw_seed = item if isinstance(item, tuple) else (item, None)
        img = self.image(i)
        if self.transform is not None:
            if draw_seed is not None:
                seed_augmentation(self.transform, draw_seed)
            img = self.transform(image=img)["image"]
        tensor = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
        return tensor, int(self.labels[self.indices[i]])


class UnpaddedDistributedSampler(DistributedSampler):
    """Rank r of n takes items r, r + n, r + 2n, …: shards differ by at most one item and no item
    is repeated (evaluation must see each image exactly once)."""

    def __init__(self, dataset: Dataset, num_replicas: int | None = None, rank: int | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        if len(dataset) < self.num_replicas:
            # A rank with nothing to evaluate would skip the metric sync the others wait in: a hang.
            raise ValueError(
                f"{len(dataset)} image(s) cannot be shared among {self.num_replicas} processes without "
                "leaving one with none; use fewer devices or a larger split"
            )
        self.num_samples = len(range(self.rank, len(dataset), self.num_replicas))
        self.total_size = len(dataset)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples
