"""The LightningDataModule: scan a source, decode once, group, split, serve loaders."""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from leuk.data.balance import (
    BALANCE_METHODS,
    BalanceMethod,
    desaturated_hsv_copy,
    inverse_frequency_weights,
    oversample_indices,
)
from leuk.data.dataset import CachedImageDataset, EpochSampler, UnpaddedDistributedSampler
from leuk.data.decode import (
    BadImagesError,
    DecodedImages,
    decode_all,
    decode_file,
    decode_patches,
    open_rgb,
)
from leuk.data.grouping import Grouping, group_images, label_conflicts
from leuk.data.sources import DataError, ImageRecord, SourceScan
from leuk.data.splits import SPLITS

log = logging.getLogger(__name__)


def _worker_context(num_workers: int) -> str | None:
    """The start method of DataLoader workers, named rather than inherited.

    Under Hydra's joblib launcher the job runs in a loky process whose default multiprocessing
    context is loky's, which cannot start DataLoader workers; naming the platform's usual method
    (fork on Linux, as torch has always used there; spawn elsewhere) works in both places.
    """
    if num_workers == 0:
        return None
    return "fork" if sys.platform.startswith("linux") else "spawn"


class LeukDataModule(L.LightningDataModule):
    """Images of one source, split leakage-safely and served as uint8 CHW batches.

    ``source`` builds the source from the data set's folder: ``source(root=root)`` (a ``_partial_``
    node, or a source class) gives an object with ``scan() -> SourceScan`` and ``cache_key``, so
    ``data.root`` is the one key that names the folder. ``split`` has
    ``assign(labels, groups, seed, class_names)`` and ``describe()``. ``train_transform`` (the
    training augmentation) and ``preprocess`` (a ``PreprocessPipeline``) come built; nothing passed
    in is changed, except that ``setup`` fits ``preprocess`` on the training split.
    """

    def __init__(
        self,
        source: Callable[..., Any],
        split: Any,
        root: str | None = None,
        fold: int | None = None,
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
        allow_conflicting_labels: bool = False,
        group_subjects: bool = False,
        balance: BalanceMethod = "none",
        hsv_copy_class: str = "hem",
        hsv_copy_as_rgb: bool = False,
        seed: int = 0,
        train_transform: Any = None,
        preprocess: Any = None,
    ) -> None:
        super().__init__()
        if balance not in BALANCE_METHODS:
            raise DataError(f"data.balance must be one of {', '.join(BALANCE_METHODS)}; got '{balance}'")
        if image_size < 16:
            raise DataError(f"data.image_size must be at least 16 px, got {image_size}")
        if batch_size < 1:
            raise DataError(f"data.batch_size must be positive, got {batch_size}")
        if num_workers < 0:
            raise DataError(f"data.num_workers must be ≥ 0, got {num_workers}")
        if pin_memory not in (True, False, "auto"):
            raise DataError(f"data.pin_memory must be true, false or auto, got {pin_memory!r}")
        if not callable(source) or (hasattr(source, "scan") and not isinstance(source, type)):
            raise DataError(
                "data.source must build the source from data.root: a _partial_ node or a source class "
                f"(called with root=...), got {type(source).__name__}"
            )
        self.root = root
        self.source = source(root=root)
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
        self.allow_conflicting_labels = allow_conflicting_labels
        self.fold = fold
        self.group_subjects = group_subjects
        self.balance = balance
        self.hsv_copy_class = hsv_copy_class
        self.hsv_copy_as_rgb = hsv_copy_as_rgb
        self.class_weights: list[float] | None = None
        self.seed = seed
        self.train_transform = train_transform
        # Deterministic preprocessing (leuk.preprocess.PreprocessPipeline): fitted on the training
        # split, run once per image at full resolution, cached with the decoded pixels.
        self.preprocess = preprocess
        self.preprocess_stats: dict[str, Any] = {}
        # Per-lesion preprocessing (ALDL, preprocess.steps.lesion.per_lesion=true): the patches, and
        # the image each patch came from. None: one sample per image.
        self.patches: np.ndarray | None = None
        self.patch_owner: np.ndarray | None = None
        self.patches_cache_hit = False
        self._ready = False
        self.summary: dict[str, Any] = {}

    # ---------------------------------------------------------------- setup
    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        self._check_per_lesion()
        scan: SourceScan = self.source.scan()
        records = self._select_fold(scan.records)
        decoded = decode_all(
            [r.path for r in records],
            self.image_size,
            mode=self.cache,
            cache_dir=self.cache_dir,
            source_key=getattr(self.source, "cache_key", scan.description),
        )
        records, decoded = self._drop_bad(records, decoded, scan.class_names)
        labels = np.array([r.label for r in records], dtype=np.int64)
        self.label_conflicts = self._check_label_conflicts(records, decoded, scan.class_names)
        self.n_blank = self._warn_blank(records, decoded)
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
        if self.preprocess is not None and not self.preprocess.is_identity:
            self._run_preprocess()
        self._set_samples()
        self._apply_balance()
        self._summarize()
        self._ready = True

    def _run_preprocess(self) -> None:
        """Fit the pipeline on training images only, then preprocess every image once (cached)."""
        pipeline = self.preprocess
        if pipeline.needs_fit:
            train_paths = [self.records[i].path for i in self.indices["train"]]
            pipeline.fit(np.asarray(open_rgb(p)) for p in train_paths)
        if self.cache == "none":
            return  # the dataset runs the pipeline on every read
        if pipeline.per_lesion:
            self._run_patches()
            return
        processed = decode_all(
            [r.path for r in self.records],
            self.image_size,
            mode=self.cache,
            cache_dir=self.cache_dir,
            source_key=getattr(self.source, "cache_key", self.scan.description),
            transform=pipeline,
            transform_key=pipeline.cache_key(),
            transform_stats=pipeline.stats,
            sha256=self.decoded.sha256,  # hashed by setup's decode_all: not read and hashed again
        )
        if processed.bad:
            raise BadImagesError(processed.bad)
        self.decoded.images = processed.images
        self.preprocess_stats = processed.stats
        log.info(
            "preprocessed %d images (%s) in %.1f s", len(self.records), pipeline.hash_key(), processed.seconds
        )
        if processed.stats:
            log.info("preprocessing events: %s", processed.stats)

    @property
    def per_lesion(self) -> bool:
        """Whether each image is expanded into one sample per lesion patch."""
        return self._preprocessing and bool(getattr(self.preprocess, "per_lesion", False))

    def _check_per_lesion(self) -> None:
        if not self.per_lesion:
            return
        key = f"preprocess.steps.{self.preprocess.per_lesion_step()}.per_lesion"
        if self.cache == "none":
            raise DataError(
                f"{key}=true computes the patches once: it needs data.cache=memory or disk, not none"
            )
        if self.balance == "hsv_copy":
            raise DataError(
                f"data.balance=hsv_copy copies whole images; it cannot be combined with {key}=true"
            )

    def _run_patches(self) -> None:
        """Every image's lesion patches, once (cached); the split is already made on images."""
        pipeline = self.preprocess
        processed = decode_patches(
            [r.path for r in self.records],
            self.image_size,
            pipeline,
            sha256=self.decoded.sha256,
            mode=self.cache,
            cache_dir=self.cache_dir,
            source_key=getattr(self.source, "cache_key", self.scan.description),
            transform_key=pipeline.cache_key(),
            transform_stats=pipeline.stats,
        )
        self.patches = processed.images
        self.patch_owner = processed.owner
        self.patches_cache_hit = processed.from_cache
        # Each image's first patch (its largest lesion) stands for the image where one image per
        # record is shown (leuk.data.preview).
        first = np.searchsorted(processed.owner, np.arange(len(self.records)))
        self.decoded.images = np.asarray(processed.images[first])
        self.preprocess_stats = processed.stats
        log.info(
            "preprocessed %d images into %d lesion patches (%s) in %.1f s",
            len(self.records),
            len(processed.owner),
            pipeline.hash_key(),
            processed.seconds,
        )
        if processed.stats:
            log.info("preprocessing events: %s", processed.stats)

    def _set_samples(self) -> None:
        """The samples of each split: its images, or with per-lesion patches the patches of its
        images (each with its image's label), so that no image's patches straddle two splits."""
        if self.patch_owner is None:
            self.sample_labels = self.labels
            self.sample_indices = self.indices
            return
        owner_split = self.assignment[self.patch_owner]
        self.sample_labels = self.labels[self.patch_owner]
        self.sample_indices = {s: np.flatnonzero(owner_split == s) for s in SPLITS}

    def _select_fold(self, records: list[ImageRecord]) -> list[ImageRecord]:
        """With ``data.fold=k``, keep fold k only (C-NMC's per-fold protocol splits each fold alone)."""
        if self.fold is None:
            return records
        available = sorted({r.fold for r in records if r.fold is not None})
        if not available:
            raise DataError("data.fold is set, but this source has no folds (only C-NMC has)")
        if self.fold not in available:
            raise DataError(f"data.fold={self.fold} is out of range: the source has folds {available}")
        return [r for r in records if r.fold == self.fold]

    def _apply_balance(self) -> None:
        """Balance the training split only; validation and test keep their images as they are.
        With per-lesion patches the balancing counts and draws patches."""
        train = self.sample_indices["train"]
        self.train_indices = train
        self.copy_of = np.zeros(0, dtype=np.int64)
        self.copy_images: np.ndarray | None = None
        n_classes = len(self.class_names)
        if self.balance == "oversample":
            self.train_indices = oversample_indices(train, self.sample_labels, self.seed)
        elif self.balance == "class_weights":
            self.class_weights = inverse_frequency_weights(self.sample_labels[train], n_classes).tolist()
        elif self.balance == "hsv_copy":
            folders = self.scan.folder_names
            if self.hsv_copy_class not in folders:
                raise DataError(
                    f"data.hsv_copy_class='{self.hsv_copy_class}' is not a class folder ({folders})"
                )
            cls = folders.index(self.hsv_copy_class)
            self.copy_of = train[self.labels[train] == cls]
            # Made once, after the split, from training images only: no copy of a validation or
            # test image can reach training.
            self.copy_images = (
                np.stack([desaturated_hsv_copy(self._pixels(i), self.hsv_copy_as_rgb) for i in self.copy_of])
                if len(self.copy_of)
                else np.zeros((0, self.image_size, self.image_size, 3), np.uint8)
            )
            n = len(self.records)
            self.train_indices = np.concatenate([train, n + np.arange(len(self.copy_of))])

    def _pixels(self, i: int) -> np.ndarray:
        if self.decoded.images is not None:
            return np.asarray(self.decoded.images[i])
        return decode_file(
            self.records[i].path, self.image_size, self.preprocess if self._preprocessing else None
        )

    @staticmethod
    def _warn_blank(records: list[ImageRecord], decoded: DecodedImages) -> int:
        """How many images are blank (one colour): kept, named in the log, never near-duplicates."""
        assert decoded.dhash_valid is not None
        blank = np.flatnonzero(~decoded.dhash_valid)
        if len(blank):
            log.warning(
                "%d blank image(s) (every pixel one colour), e.g. %s: kept, but their difference hash "
                "says nothing, so they join no near-duplicate group",
                len(blank),
                [records[i].path for i in blank[:5]],
            )
        return len(blank)

    def _check_label_conflicts(
        self, records: list[ImageRecord], decoded: DecodedImages, class_names: list[str]
    ) -> list[list[int]]:
        """Byte-identical files under two classes: an error naming them, unless
        ``data.allow_conflicting_labels=true`` (then a warning; they stay in one group, one split)."""
        conflicts = label_conflicts(decoded.sha256, [r.label for r in records])
        if not conflicts:
            return conflicts
        lines = [
            " = ".join(f"{records[i].path} ({class_names[records[i].label]})" for i in group)
            for group in conflicts
        ]
        listing = "\n".join(f"  {line}" for line in lines[:50])
        more = f"\n  ... and {len(lines) - 50} more" if len(lines) > 50 else ""
        what = f"{len(conflicts)} set(s) of byte-identical images carry different labels"
        if not self.allow_conflicting_labels:
            raise DataError(
                f"{what} (one file in two class folders):\n{listing}{more}\nKeep each in its one "
                "class folder, or set data.allow_conflicting_labels=true to train on them as they are."
            )
        log.warning("%s (data.allow_conflicting_labels=true: kept):\n%s%s", what, listing, more)
        return conflicts

    def _drop_bad(
        self, records: list[ImageRecord], decoded: DecodedImages, class_names: list[str]
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
        empty = [class_names[c] for c in range(max(r.label for r in records) + 1) if by_class[c] == 0]
        if empty:
            raise DataError(f"after skipping unreadable images no image is left in class(es) {empty}")
        decoded = DecodedImages(
            images=None if decoded.images is None else np.asarray(decoded.images)[keep],
            sha256=[s for s, k in zip(decoded.sha256, keep, strict=True) if k],
            dhash=decoded.dhash[keep],
            dhash_valid=None if decoded.dhash_valid is None else decoded.dhash_valid[keep],
            bad=decoded.bad,
            from_cache=decoded.from_cache,
            seconds=decoded.seconds,
        )
        return kept, decoded

    def _group(self, records: list[ImageRecord], decoded: DecodedImages) -> Grouping:
        subjects = [r.subject for r in records] if self.group_subjects else None
        if self.group_subjects and not any(subjects or []):
            raise DataError("data.group_subjects=true, but this source has no subject IDs")
        if not self.group_duplicates:
            log.warning(
                "data.group_duplicates=false: duplicate and near-duplicate images may fall on both sides "
                "of the train/test line (a naive split, as some papers used)"
            )
            # Subject grouping is a separate choice and still holds: every image its own content key.
            return group_images([str(i) for i in range(len(records))], subjects=subjects)
        return group_images(
            decoded.sha256, decoded.dhash, self.near_duplicate_distance, subjects, decoded.dhash_valid
        )

    def _shared_subjects(self) -> tuple[int | None, dict[str, int] | None]:
        """How many subjects the source has and how many appear in two splits (None for a source
        without subject IDs: 'not known', which a 0 would misreport as 'none shared')."""
        subjects = np.array([r.subject for r in self.records], dtype=object)
        known = np.array([subject is not None for subject in subjects], dtype=bool)
        if not known.any():
            return None, None
        by_split = {s: set(subjects[idx][known[idx]].tolist()) for s, idx in self.indices.items()}
        shared = {
            f"{a}_{b}": len(by_split[a] & by_split[b])
            for a, b in (("train", "test"), ("train", "val"), ("val", "test"))
        }
        return len(set(subjects[known].tolist())), shared

    def _summarize(self) -> None:
        n_subjects, shared = self._shared_subjects()
        counts = {
            s: {self.class_names[c]: int((self.labels[idx] == c).sum()) for c in range(len(self.class_names))}
            for s, idx in self.indices.items()
        }
        self.summary = {
            "data_source": self.scan.description,
            "split_protocol": self.split.describe(),
            "n_images": len(self.records),
            "n_train": len(self.indices["train"]),
            "n_train_balanced": len(self.train_indices),
            "balance": self.balance,
            "train_copies_added": len(self.copy_of),
            "n_val": len(self.indices["val"]),
            "n_test": len(self.indices["test"]),
            "class_counts": counts,
            "grouping": "on" if self.group_duplicates else "off (naive split: duplicates may leak)",
            "n_groups": self.grouping.n_groups,
            "images_merged_into_groups": self.grouping.merged,
            "subject_grouping": self.group_subjects,
            "n_subjects": n_subjects,
            "subjects_shared": shared,
            "exact_duplicate_pairs": len(self.grouping.exact_pairs),
            "near_duplicate_pairs": len(self.grouping.near_pairs),
            "bad_images_skipped": len(self.decoded.bad),
            "non_image_files_ignored": len(self.scan.ignored_files),
            "unmapped_folders_ignored": len(self.scan.unmapped_folders),
            "unmapped_files_ignored": self.scan.n_unmapped_files,
            "blank_images": self.n_blank,
            "conflicting_label_sets": len(self.label_conflicts),
            "preprocess": self.preprocess.cache_key() if self._preprocessing else "none",
            "preprocess_stats": self.preprocess_stats,
            "decode_seconds": round(self.decoded.seconds, 3),
            "decode_cache_hit": self.decoded.from_cache,
        }
        if self.patch_owner is not None:
            self.summary["n_patches"] = {s: len(self.sample_indices[s]) for s in SPLITS}
            self.summary["patches_per_image"] = round(len(self.patch_owner) / max(1, len(self.records)), 3)
            self.summary["patches_cache_hit"] = self.patches_cache_hit
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
        if self.patch_owner is not None:
            log.info(
                "lesion patches (per_lesion, the split made on images): train %d, val %d, test %d "
                "(%.2f per image)",
                *(len(self.sample_indices[s]) for s in SPLITS),
                self.summary["patches_per_image"],
            )
        if shared is None:
            log.info("subjects shared across splits: n/a (the source has no subject IDs)")
        elif any(shared.values()):
            log.warning(
                "subjects shared across splits (of %d): train/test %d, train/val %d, val/test %d (an "
                "image-level split: test scores are for cells of subjects seen in training); "
                "data.group_subjects=true keeps each subject in one split",
                n_subjects,
                shared["train_test"],
                shared["train_val"],
                shared["val_test"],
            )
        else:
            log.info("subjects shared across splits: none (%d subjects)", n_subjects)

    # ---------------------------------------------------------------- access
    @property
    def num_classes(self) -> int:
        if not self._ready:
            self.setup()
        return len(self.class_names)

    def split_frame(self) -> pd.DataFrame:
        """The split manifest (``split.csv``): absolute path, label, class name, split, group, and
        ``variant`` (``original``, or ``hsv_copy`` for a balancing copy of a training image); with
        per-lesion patches also ``n_patches``, the image's number of patches (one row per image)."""
        frame = pd.DataFrame(
            {
                "path": [r.path for r in self.records],
                "label": self.labels,
                "class_name": [self.class_names[c] for c in self.labels],
                "split": self.assignment,
                "group": self.grouping.groups,
                "subject": [r.subject for r in self.records],
                "variant": "original",
            }
        )
        if self.patch_owner is not None:
            frame["n_patches"] = np.bincount(self.patch_owner, minlength=len(self.records))
        if len(self.copy_of):
            copies = frame.iloc[self.copy_of].copy()
            copies["variant"] = "hsv_copy"
            frame = pd.concat([frame, copies], ignore_index=True)
        return frame

    def dataset(self, split: str, augment: bool | None = None, balanced: bool = True) -> CachedImageDataset:
        """The images (or lesion patches) of ``split``; the training split with its balancing unless
        ``balanced=False``."""
        if not self._ready:
            self.setup()
        use_aug = (split == "train") if augment is None else augment
        indices = self.train_indices if (split == "train" and balanced) else self.sample_indices[split]
        paths = [r.path for r in self.records]
        if self.patch_owner is not None:
            paths = [paths[i] for i in self.patch_owner]
        return CachedImageDataset(
            indices,
            np.concatenate([self.sample_labels, self.labels[self.copy_of]]),
            self.decoded.images if self.patches is None else self.patches,
            paths,
            self.image_size,
            self.train_transform if use_aug else None,
            extra_images=self.copy_images,
            preprocess=self.preprocess if (self._preprocessing and self.decoded.images is None) else None,
        )

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        ds = self.dataset(split)
        if len(ds) == 0:
            raise DataError(f"the {split} split is empty (data.split: {self.split.describe()})")
        sampler = None
        if split != "train" and torch.distributed.is_available() and torch.distributed.is_initialized():
            # Lightning's default DistributedSampler pads the last shard by repeating images, so a
            # test image could be counted twice; this sampler gives each rank a disjoint share, every
            # image exactly once (Lightning keeps a sampler that is already distributed).
            try:
                sampler = UnpaddedDistributedSampler(ds)
            except ValueError as err:
                raise DataError(f"the {split} split: {err} (data.split: {self.split.describe()})") from err
        if split == "train":
            # The order and every augmentation come from (seed, epoch, position), whichever worker
            # loads an item (leuk.data.dataset): the same with any num_workers, new each epoch.
            weights = None
            if self.balance == "weighted_sampler":
                train_labels = self.sample_labels[self.train_indices]
                weights = 1.0 / np.bincount(train_labels)[train_labels]
            sampler = EpochSampler(len(ds), self.seed, shuffle=shuffle, weights=weights)
            shuffle = False
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            multiprocessing_context=_worker_context(self.num_workers),
            # Without a generator each new iterator draws the workers' base seed from the global
            # stream, more often with num_workers=0 than with persistent workers: the model's
            # dropout would then see a different stream for each setting.
            generator=torch.Generator().manual_seed(self.seed),
            # A lone last training image would break BatchNorm in training mode (one value per
            # channel); drop only that case, never a real batch, and never in evaluation.
            drop_last=split == "train" and len(ds) > self.batch_size and len(ds) % self.batch_size == 1,
        )

    @property
    def _preprocessing(self) -> bool:
        return self.preprocess is not None and not self.preprocess.is_identity

    @property
    def has_val(self) -> bool:
        return len(self.indices["val"]) > 0

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        # A protocol without validation (data.split.val=0) runs no validation loop.
        return self._loader("val", shuffle=False) if self.has_val else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
