"""The LightningDataModule: scan a source, decode once, group, split, serve loaders."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from leuk.data.dataset import CachedImageDataset
from leuk.data.decode import BadImagesError, DecodedImages, decode_all
from leuk.data.grouping import Grouping, group_images
from leuk.data.sources import DataError, ImageRecord, SourceScan
from leuk.data.splits import SPLITS

log = logging.getLogger(__name__)


class LeukDataModule(L.LightningDataModule):
    """Images of one source, split leakage-safely and served as uint8 CHW batches.

    ``source`` has ``scan() -> SourceScan`` and ``cache_key``; ``split`` has
    ``assign(labels, groups, seed, class_names)`` and ``describe()``.
    """

    def __init__(
        self,
        source: Any,
        split: Any,
        image_size: int = 224,
        batch_size: int = 32,
        num_workers: int = 2,
        pin_memory: bool | str = "auto",
        persistent_workers: bool = True,
        cache: str = "disk",
        cache_dir: str | None = None,
        group_duplicates: bool = True,
        near_duplicate_distance: int | None = 4,
        skip_bad: bool = False,
        seed: int = 0,
        train_transform: Any = None,
    ) -> None:
        super().__init__()
        if image_size < 16:
            raise DataError(f"data.image_size must be at least 16 px, got {image_size}")
        if batch_size < 1:
            raise DataError(f"data.batch_size must be positive, got {batch_size}")
        if num_workers < 0:
            raise DataError(f"data.num_workers must be ≥ 0, got {num_workers}")
        if pin_memory not in (True, False, "auto"):
            raise DataError(f"data.pin_memory must be true, false or auto, got {pin_memory!r}")
        self.source = source
        self.split = split
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory == "auto" else bool(pin_memory)
        self.persistent_workers = persistent_workers and num_workers > 0
        self.cache = cache
        self.cache_dir = cache_dir
        self.group_duplicates = group_duplicates
        self.near_duplicate_distance = near_duplicate_distance
        self.skip_bad = skip_bad
        self.seed = seed
        self.train_transform = train_transform
        self._ready = False
        self.summary: dict[str, Any] = {}

    # ---------------------------------------------------------------- setup
    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        scan: SourceScan = self.source.scan()
        records = scan.records
        decoded = decode_all(
            [r.path for r in records],
            self.image_size,
            mode=self.cache,
            cache_dir=self.cache_dir,
            source_key=getattr(self.source, "cache_key", scan.description),
        )
        records, decoded = self._drop_bad(records, decoded)
        labels = np.array([r.label for r in records], dtype=np.int64)
        grouping = self._group(records, decoded)
        assignment = self.split.assign(labels, grouping.groups, self.seed, scan.class_names)

        self.scan = scan
        self.records = records
        self.decoded = decoded
        self.labels = labels
        self.grouping = grouping
        self.assignment = assignment
        self.class_names = scan.class_names
        self.indices = {s: np.flatnonzero(assignment == s) for s in SPLITS}
        self._summarize()
        self._ready = True

    def _drop_bad(
        self, records: list[ImageRecord], decoded: DecodedImages
    ) -> tuple[list[ImageRecord], DecodedImages]:
        if not decoded.bad:
            return records, decoded
        if not self.skip_bad:
            raise BadImagesError(decoded.bad)
        bad_paths = {p for p, _ in decoded.bad}
        keep = np.array([r.path not in bad_paths for r in records])
        log.warning(
            "skipping %d unreadable image(s) (data.skip_bad=true): %s", len(bad_paths), sorted(bad_paths)[:5]
        )
        kept = [r for r, k in zip(records, keep, strict=True) if k]
        by_class = Counter(r.label for r in kept)
        empty = [
            self.source.scan().class_names[c]
            for c in range(max(r.label for r in records) + 1)
            if by_class[c] == 0
        ]
        if empty:
            raise DataError(f"after skipping unreadable images no image is left in class(es) {empty}")
        decoded = DecodedImages(
            images=None if decoded.images is None else np.asarray(decoded.images)[keep],
            sha256=[s for s, k in zip(decoded.sha256, keep, strict=True) if k],
            dhash=decoded.dhash[keep],
            bad=decoded.bad,
            from_cache=decoded.from_cache,
            seconds=decoded.seconds,
        )
        return kept, decoded

    def _group(self, records: list[ImageRecord], decoded: DecodedImages) -> Grouping:
        if not self.group_duplicates:
            log.warning(
                "data.group_duplicates=false: duplicate and near-duplicate images may fall on both sides "
                "of the train/test line (a naive split, as some papers used)"
            )
            return Grouping(np.arange(len(records)), [], [], 0)
        return group_images(decoded.sha256, decoded.dhash, self.near_duplicate_distance)

    def _summarize(self) -> None:
        counts = {
            s: {self.class_names[c]: int((self.labels[idx] == c).sum()) for c in range(len(self.class_names))}
            for s, idx in self.indices.items()
        }
        self.summary = {
            "data_source": self.scan.description,
            "split_protocol": self.split.describe(),
            "n_images": len(self.records),
            "n_train": len(self.indices["train"]),
            "n_val": len(self.indices["val"]),
            "n_test": len(self.indices["test"]),
            "class_counts": counts,
            "grouping": "on" if self.group_duplicates else "off (naive split: duplicates may leak)",
            "n_groups": self.grouping.n_groups,
            "images_merged_into_groups": self.grouping.merged,
            "exact_duplicate_pairs": len(self.grouping.exact_pairs),
            "near_duplicate_pairs": len(self.grouping.near_pairs),
            "bad_images_skipped": len(self.decoded.bad),
            "non_image_files_ignored": len(self.scan.ignored_files),
            "decode_seconds": round(self.decoded.seconds, 3),
            "decode_cache_hit": self.decoded.from_cache,
        }
        log.info(
            "data: %d images, %d classes, split %s; groups: %d (%d images merged: %d exact, %d near pairs)",
            len(self.records),
            len(self.class_names),
            self.split.describe(),
            self.grouping.n_groups,
            self.grouping.merged,
            len(self.grouping.exact_pairs),
            len(self.grouping.near_pairs),
        )
        for s in SPLITS:
            log.info("  %-5s %5d  %s", s, len(self.indices[s]), counts[s])

    # ---------------------------------------------------------------- access
    @property
    def num_classes(self) -> int:
        if not self._ready:
            self.setup()
        return len(self.class_names)

    def split_frame(self) -> pd.DataFrame:
        """The split manifest (``split.csv``): absolute path, label, class name, split, group."""
        return pd.DataFrame(
            {
                "path": [r.path for r in self.records],
                "label": self.labels,
                "class_name": [self.class_names[c] for c in self.labels],
                "split": self.assignment,
                "group": self.grouping.groups,
            }
        )

    def dataset(self, split: str, augment: bool | None = None) -> CachedImageDataset:
        if not self._ready:
            self.setup()
        use_aug = (split == "train") if augment is None else augment
        return CachedImageDataset(
            self.indices[split],
            self.labels,
            self.decoded.images,
            [r.path for r in self.records],
            self.image_size,
            self.train_transform if use_aug else None,
        )

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        ds = self.dataset(split)
        if len(ds) == 0:
            raise DataError(f"the {split} split is empty (data.split: {self.split.describe()})")
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
