"""A map-style dataset over decoded images: a cache row (or a file) → augmentation → uint8 CHW tensor.

Images leave the loader as uint8: a quarter of the bytes of float32 to copy into pinned memory and
to the GPU. Scaling to [0, 1] and normalization happen on the device (``Classifier``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from leuk.data.decode import decode_file


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

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.image(i)
        if self.transform is not None:
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
