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
