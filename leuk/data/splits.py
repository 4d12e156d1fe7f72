"""Seeded, stratified, group-aware splits for every published protocol.

A split assigns each image to ``train``, ``val`` or ``test``. Images are assigned by group (see
``leuk.data.grouping``), so a group never straddles two splits, and by class, so every split keeps
the class proportions. The same labels, groups and seed always give the same assignment.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from leuk.data.sources import DataError

SPLITS = ("train", "val", "test")


def _group_labels(labels: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group: its id, its size and its majority label (a group mixing labels takes the majority)."""
    ids, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    n_classes = int(labels.max()) + 1 if len(labels) else 0
    counts = np.zeros((len(ids), n_classes), dtype=np.int64)
    np.add.at(counts, (inverse, labels), 1)
    return ids, sizes, counts.argmax(axis=1)


def stratified_group_assign(
    labels: np.ndarray,
    groups: np.ndarray,
    fractions: Mapping[str, float],
    seed: int,
    class_names: list[str] | None = None,
) -> np.ndarray:
    """Assign images to the named parts in ``fractions`` (summing to 1), per class, by whole groups.

    Within each class the groups are shuffled with ``seed`` and the larger groups placed first;
    each group goes to the part furthest below its target, so parts end within a group's size of
    their targets. A part with a positive fraction that would get no image of some class is an error.
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    names = [k for k, v in fractions.items() if v > 0]
    frac = np.array([fractions[k] for k in names], dtype=np.float64)
    rng = np.random.default_rng(seed)
    ids, sizes, glabel = _group_labels(labels, groups)
    group_part = {}
    for c in np.unique(glabel):
        members = np.flatnonzero(glabel == c)
        members = members[rng.permutation(len(members))]
        members = members[np.argsort(-sizes[members], kind="stable")]
        target = frac * sizes[members].sum()
        filled = np.zeros(len(names))
        for m in members:
            # The part with the most room left; ties go to the earlier part.
            k = int(np.argmax(target - filled))
            filled[k] += sizes[m]
            group_part[ids[m]] = names[k]
        for k, name in enumerate(names):
            if filled[k] == 0:
                cname = class_names[c] if class_names else str(c)
                raise DataError(
                    f"the split leaves '{name}' without any image of class '{cname}' "
                    f"({int(sizes[members].sum())} images in {len(members)} groups); "
                    "change the split ratios or add data"
                )
    return np.array([group_part[g] for g in groups], dtype=object)


def _check_fraction(name: str, value: float) -> float:
    if not (0.0 <= value <= 1.0) or math.isnan(value):
        raise DataError(f"data.split.{name} must lie in [0, 1], got {value}")
    return float(value)


class RatioSplit:
    """Train/validation/test by ratio (e.g. 80/10/10 for MCB-HyperNet, MSEENet and VGG16)."""

    def __init__(self, train: float = 0.8, val: float = 0.1, test: float = 0.1) -> None:
        self.fractions = {
            n: _check_fraction(n, v) for n, v in (("train", train), ("val", val), ("test", test))
        }
        total = sum(self.fractions.values())
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise DataError(
                f"data.split ratios must sum to 1: train {train} + val {val} + test {test} = {total:g}"
            )
        if self.fractions["train"] == 0:
            raise DataError("data.split.train must be positive")

    def assign(
        self, labels: np.ndarray, groups: np.ndarray, seed: int, class_names: list[str] | None = None
    ) -> np.ndarray:
        return stratified_group_assign(labels, groups, self.fractions, seed, class_names)

    def describe(self) -> str:
        f = self.fractions
        return f"ratio {f['train']:g}/{f['val']:g}/{f['test']:g}"


class TrainTestSplit:
    """A train/test protocol (70/30 and 60/40 in ALDL) with a validation part for early stopping
    carved from the training part (``val`` is a fraction of the training part; 0 allowed)."""

    def __init__(self, test: float = 0.3, val: float = 0.1) -> None:
        test = _check_fraction("test", test)
        val = _check_fraction("val", val)
        if not 0 < test < 1:
            raise DataError(f"data.split.test must lie strictly between 0 and 1, got {test}")
        if val >= 1:
            raise DataError(f"data.split.val is a fraction of the training part and must be < 1, got {val}")
        self.test = test
        self.val = val
        train_part = 1.0 - test
        self.fractions = {"train": train_part * (1 - val), "val": train_part * val, "test": test}

    def assign(
        self, labels: np.ndarray, groups: np.ndarray, seed: int, class_names: list[str] | None = None
    ) -> np.ndarray:
        return stratified_group_assign(labels, groups, self.fractions, seed, class_names)

    def describe(self) -> str:
        return f"train/test {1 - self.test:g}/{self.test:g} (val {self.val:g} of train)"


class KFoldSplit:
    """Stratified group k-fold cross-validation: fold ``fold_index`` is the test part, the rest is
    training data, of which ``val`` (a fraction) is held out for validation."""

    def __init__(self, k: int = 5, fold_index: int = 0, val: float = 0.1) -> None:
        if k < 2:
            raise DataError(f"data.split.k must be at least 2, got {k}")
        self.k = k
        self.val = _check_fraction("val", val)
        if self.val >= 1:
            raise DataError(f"data.split.val must be < 1, got {val}")
        self.fold_index = fold_index

    def assign(
        self, labels: np.ndarray, groups: np.ndarray, seed: int, class_names: list[str] | None = None
    ) -> np.ndarray:
        from sklearn.model_selection import StratifiedGroupKFold

        if not 0 <= self.fold_index < self.k:
            raise DataError(
                f"data.fold_index={self.fold_index} is out of range for {self.k}-fold (0…{self.k - 1})"
            )
        labels = np.asarray(labels)
        groups = np.asarray(groups)
        folds = StratifiedGroupKFold(n_splits=self.k, shuffle=True, random_state=seed)
        train_idx, test_idx = list(folds.split(np.zeros(len(labels)), labels, groups))[self.fold_index]
        out = np.empty(len(labels), dtype=object)
        out[test_idx] = "test"
        inner = {"train": 1 - self.val, "val": self.val}
        # A different stream from the fold shuffling, so the validation part is not tied to the folds.
        out[train_idx] = stratified_group_assign(
            labels[train_idx], groups[train_idx], inner, seed + 1, class_names
        )
        return out

    def describe(self) -> str:
        return f"{self.k}-fold, fold {self.fold_index} (val {self.val:g} of train)"
