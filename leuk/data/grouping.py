"""Group images that must stay on one side of every split line.

Exact duplicates share a content hash; near-duplicates have difference hashes within a small
Hamming distance (re-saved or re-cropped copies); images of one subject may be grouped too. Groups
are the connected components of those relations (union–find), so a chain of near-copies is one
group. An image whose difference hash says nothing (unreadable or blank: both hash to 0) takes
part in exact-duplicate grouping only. Byte-identical files filed under two classes are
``label_conflicts``: the data contradicts itself, which grouping alone would hide.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return int(root)

    def union(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        self.parent[max(ra, rb)] = min(ra, rb)
        return True


@dataclass
class Grouping:
    """``groups[i]`` is image i's group id (0..n_groups-1, in order of first appearance)."""

    groups: np.ndarray
    exact_pairs: list[tuple[int, int]]
    near_pairs: list[tuple[int, int]]
    subject_links: int

    @property
    def n_groups(self) -> int:
        return int(self.groups.max()) + 1 if len(self.groups) else 0

    @property
    def merged(self) -> int:
        """How many images joined another image's group (n_images - n_groups)."""
        return len(self.groups) - self.n_groups

    def multi_image_groups(self) -> list[list[int]]:
        out: dict[int, list[int]] = {}
        for i, g in enumerate(self.groups.tolist()):
            out.setdefault(g, []).append(i)
        return [members for members in out.values() if len(members) > 1]


def near_duplicate_pairs(dhash: np.ndarray, max_distance: int, chunk: int = 2048) -> list[tuple[int, int]]:
    """All pairs i < j whose 64-bit hashes differ in at most ``max_distance`` bits."""
    h = np.asarray(dhash, dtype=np.uint64)
    n = len(h)
    pairs: list[tuple[int, int]] = []
    for start in range(0, n, chunk):
        block = h[start : start + chunk]
        dist = np.bitwise_count(block[:, None] ^ h[None, :])
        ii, jj = np.nonzero(dist <= max_distance)
        ii = ii + start
        keep = ii < jj
        pairs.extend(zip(ii[keep].tolist(), jj[keep].tolist(), strict=True))
    return pairs


def label_conflicts(sha256: Sequence[str], labels: Sequence[int]) -> list[list[int]]:
    """The sets of byte-identical files (one SHA-256; "" = unread, never a match) that carry more
    than one label, each in index order, in order of first appearance."""
    by_hash: dict[str, list[int]] = {}
    for i, digest in enumerate(sha256):
        if digest:
            by_hash.setdefault(digest, []).append(i)
    return [members for members in by_hash.values() if len({int(labels[i]) for i in members}) > 1]


def group_images(
    sha256: Sequence[str],
    dhash: np.ndarray | None = None,
    max_distance: int | None = None,
    subjects: Sequence[str | None] | None = None,
    dhash_valid: Sequence[bool] | np.ndarray | None = None,
) -> Grouping:
    """Union exact duplicates, near-duplicates (if ``max_distance`` is set) and equal subjects.

    ``dhash_valid``: False for images whose difference hash means nothing (unreadable, blank);
    they are paired with no image by their hash.
    """
    n = len(sha256)
    uf = _UnionFind(n)
    first: dict[str, int] = {}
    exact: list[tuple[int, int]] = []
    for i, digest in enumerate(sha256):
        if not digest:
            continue  # a file that could not be read has no content to match
        if digest in first:
            exact.append((first[digest], i))
            uf.union(first[digest], i)
        else:
            first[digest] = i
    near: list[tuple[int, int]] = []
    if max_distance is not None and dhash is not None and n:
        exact_set = set(exact)
        # Pairs among the meaningful hashes only, mapped back to image indices (still i < j).
        keep = np.ones(n, dtype=bool) if dhash_valid is None else np.asarray(dhash_valid, dtype=bool)
        index = np.flatnonzero(keep)
        for a, b in near_duplicate_pairs(np.asarray(dhash)[index], max_distance):
            i, j = int(index[a]), int(index[b])
            if sha256[i] != sha256[j] and (i, j) not in exact_set:
                near.append((i, j))
            uf.union(i, j)
    links = 0
    if subjects is not None:
        seen: dict[str, int] = {}
        for i, subject in enumerate(subjects):
            if subject is None:
                continue
            if subject in seen:
                links += uf.union(seen[subject], i)
            else:
                seen[subject] = i
    roots = np.array([uf.find(i) for i in range(n)], dtype=np.int64)
    _, groups = np.unique(roots, return_inverse=True)
    # Renumber by first appearance so ids do not depend on union order.
    order: dict[int, int] = {}
    renumbered = np.array([order.setdefault(int(g), len(order)) for g in groups], dtype=np.int64)
    return Grouping(renumbered, exact, near, links)
