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


def _place_class(sizes: np.ndarray, frac: np.ndarray, rng: np.random.Generator) -> np.ndarray | int:
    """The part index of each group of one class (see ``stratified_group_assign``), or the index of
    a part that no group can be given to."""
    order = list(rng.permutation(len(sizes)))
    target = frac * sizes.sum()
    part = np.empty(len(sizes), dtype=np.int64)
    dealt = np.zeros(len(frac))
    # One group to each part first, so that no part is left without the class: the smallest part
    # first, each taking the first group in the order that its target would round up to (a group
    # at most twice the target), so a 5 % part is not handed a third of a tiny class.
    for k in np.argsort(target, kind="stable"):
        fits = [i for i, m in enumerate(order) if sizes[m] <= 2 * target[k]]
        if not fits:
            return int(k)
        m = order.pop(fits[0])
        part[m] = k
        dealt[k] = sizes[m]
    rest = np.array(order, dtype=np.int64)
    if len(rest) == 0:
        return part
    # The rest laid end to end and cut where each part's room ends; a group goes to the part that
    # holds its middle. Rooms sum to the remaining length unless a dealt group overfilled its part.
    room = np.clip(target - dealt, 0, None)
    bounds = np.cumsum(room) * (sizes[rest].sum() / room.sum())
    middles = np.cumsum(sizes[rest]) - sizes[rest] / 2
    part[rest] = np.minimum(np.searchsorted(bounds, middles, side="right"), len(frac) - 1)
    return part


def stratified_group_assign(
    labels: np.ndarray,
    groups: np.ndarray,
    fractions: Mapping[str, float],
    seed: int,
    class_names: list[str] | None = None,
) -> np.ndarray:
    """Assign images to the named parts in ``fractions`` (summing to 1), per class, by whole groups.

    Within each class the groups are taken in a seeded random order, with no sort by size (a size
    sort lets the seed reorder only equal-sized groups, so the large ones, duplicate pairs or whole
    subjects, would land in the same part for every seed). First each part is dealt one group, the
    first in the order that is at most twice its target; the rest are laid end to end and cut at
    the parts' remaining targets, each group going to the part that holds its middle: the naive
    shuffle-and-cut split, at the group level. Where every group fits every part, neither step
    looks at a group's size, so a group of any size reaches each part as often as a single image.

    Tolerance, per class: when no group is larger than the smallest part's target, every part ends
    within half a group of its target at each of its two cuts, so within the class's largest group.
    A part with a positive fraction that can get no image of some class (fewer groups than parts,
    or a target under half of every group left) is an error.
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
        placed = _place_class(sizes[members], frac, rng)
        if isinstance(placed, int):
            cname = class_names[c] if class_names else str(c)
            total = int(sizes[members].sum())
            raise DataError(
                f"the split leaves '{names[placed]}' without any image of class '{cname}' "
                f"({total} images in {len(members)} groups; its target is {frac[placed] * total:.2g} "
                f"images, and no group is left that rounds to it); change the split ratios or add data"
            )
        for m, k in zip(members, placed, strict=True):
            group_part[ids[m]] = names[k]
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
    training data, of which ``val`` (a fraction) is held out for validation.

    The folds are k equal parts placed by ``stratified_group_assign``, not by sklearn's
    ``StratifiedGroupKFold``: that one sorts groups by the spread of their class counts (for a
    one-class group, its size) after shuffling, so the seed reorders only equal-sized groups.
    """

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
        if not 0 <= self.fold_index < self.k:
            raise DataError(
                f"data.split.fold_index={self.fold_index} is out of range for {self.k}-fold (0…{self.k - 1})"
            )
        labels = np.asarray(labels)
        groups = np.asarray(groups)
        # The folds depend on the seed only, never on fold_index, so a seed's k runs test every
        # image exactly once.
        folds = stratified_group_assign(
            labels, groups, {f"fold {i}": 1 / self.k for i in range(self.k)}, seed, class_names
        )
        test = folds == f"fold {self.fold_index}"
        out = np.empty(len(labels), dtype=object)
        out[test] = "test"
        train_idx = np.flatnonzero(~test)
        inner = {"train": 1 - self.val, "val": self.val}
        # A different stream from the fold placement, so the validation part is not tied to the folds.
        out[train_idx] = stratified_group_assign(
            labels[train_idx], groups[train_idx], inner, seed + 1, class_names
        )
        return out

    def describe(self) -> str:
        return f"{self.k}-fold, fold {self.fold_index} (val {self.val:g} of train)"
