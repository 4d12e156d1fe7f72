"""What a data set holds, before training (``python -m leuk.cli.inspect data=<name> data.root=...``).

Per-class counts, image sizes, exact and near-duplicate groups (the ones a naive split would leak
across the train/test line) and unreadable files, printed (the command also writes ``inspect.json``).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image
from rich.console import Console
from rich.table import Table

from leuk.data.datamodule import LeukDataModule
from leuk.data.decode import decode_all
from leuk.data.grouping import group_images


def _image_size(path: str) -> str:
    try:
        with Image.open(path) as im:
            return f"{im.size[0]}x{im.size[1]} {im.mode}"
    except Exception:
        return "unreadable"


def inspect_data(datamodule: LeukDataModule, show_groups: int = 10) -> dict[str, Any]:
    """The report of ``datamodule``'s source (scanned, not set up: no split, no decode cache),
    grouped with its ``near_duplicate_distance``; printed, and returned for ``inspect.json``."""
    scan = datamodule.source.scan()
    distance = datamodule.near_duplicate_distance
    paths = [r.path for r in scan.records]
    # Hashes need every file read once; pixels are not kept.
    decoded = decode_all(paths, 16, mode="none")
    grouping = group_images(decoded.sha256, decoded.dhash, distance)
    labels = [r.label for r in scan.records]
    per_class = Counter(labels)
    sizes = Counter(_image_size(p) for p in paths)
    groups = grouping.multi_image_groups()
    report = {
        "source": scan.description,
        "n_images": len(paths),
        "class_counts": {scan.class_names[c]: per_class[c] for c in range(len(scan.class_names))},
        "image_sizes": dict(sizes.most_common()),
        "subjects": len({r.subject for r in scan.records if r.subject is not None}),
        "exact_duplicate_pairs": [[paths[i], paths[j]] for i, j in grouping.exact_pairs],
        "near_duplicate_pairs": [[paths[i], paths[j]] for i, j in grouping.near_pairs],
        "near_duplicate_distance": distance,
        "duplicate_groups": [[paths[i] for i in g] for g in groups],
        "groups_spanning_classes": [[paths[i] for i in g] for g in groups if len({labels[i] for i in g}) > 1],
        "bad_files": [{"path": p, "error": e} for p, e in decoded.bad],
        "non_image_files": scan.ignored_files,
    }
    _print(report, show_groups)
    return report


def _print(report: dict[str, Any], show_groups: int) -> None:
    console = Console()
    table = Table(title=f"{report['source']}: {report['n_images']} images")
    table.add_column("class")
    table.add_column("images", justify="right")
    for name, n in report["class_counts"].items():
        table.add_row(name, str(n))
    console.print(table)
    console.print(f"image sizes: {report['image_sizes']}")
    console.print(
        f"exact duplicate pairs: {len(report['exact_duplicate_pairs'])}; near-duplicate pairs "
        f"(distance ≤ {report['near_duplicate_distance']}): {len(report['near_duplicate_pairs'])}; "
        f"groups of 2+ images: {len(report['duplicate_groups'])} "
        f"({len(report['groups_spanning_classes'])} spanning two classes)"
    )
    for group in report["duplicate_groups"][:show_groups]:
        console.print("  " + " = ".join(Path(p).name for p in group))
    console.print(
        f"unreadable files: {len(report['bad_files'])}; non-image files: {len(report['non_image_files'])}"
    )
    for bad in report["bad_files"]:
        console.print(f"  {bad['path']}: {bad['error']}")
