"""What a data set holds, before training (``python -m leuk.cli.inspect data=<name> data.root=...``).

Per-class counts, image sizes and bit depths, exact and near-duplicate groups (the ones a naive
split would leak across the train/test line), byte-identical images under two classes, blank and
unreadable files, and what the source did not read (folders mapped to no class, loose files),
printed (the command also writes ``inspect.json``).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image
from rich.console import Console
from rich.table import Table

from leuk.data.datamodule import LeukDataModule
from leuk.data.decode import bit_depth, decode_all
from leuk.data.grouping import group_images, label_conflicts


def _image_info(path: str) -> tuple[str, str]:
    """(``"<w>x<h> <mode>"``, ``"<bits>-bit <mode>"``) from the header, or "unreadable" twice."""
    try:
        with Image.open(path) as im:
            return f"{im.size[0]}x{im.size[1]} {im.mode}", f"{bit_depth(im)}-bit {im.mode}"
    except Exception:
        return "unreadable", "unreadable"


def inspect_data(datamodule: LeukDataModule, show_groups: int = 10) -> dict[str, Any]:
    """The report of ``datamodule``'s source (scanned, not set up: no split, no decode cache),
    grouped with its ``near_duplicate_distance``; printed, and returned for ``inspect.json``."""
    scan = datamodule.source.scan()
    distance = datamodule.near_duplicate_distance
    paths = [r.path for r in scan.records]
    # Hashes need every file read once; pixels are not kept.
    decoded = decode_all(paths, 16, mode="none")
    grouping = group_images(decoded.sha256, decoded.dhash, distance, dhash_valid=decoded.dhash_valid)
    labels = [r.label for r in scan.records]
    per_class = Counter(labels)
    info = [_image_info(p) for p in paths]
    sizes = Counter(size for size, _ in info)
    depths = Counter(depth for _, depth in info)
    groups = grouping.multi_image_groups()
    unreadable = {p for p, _ in decoded.bad}
    assert decoded.dhash_valid is not None
    blank = [p for p, ok in zip(paths, decoded.dhash_valid, strict=True) if not ok and p not in unreadable]
    conflicts = [
        [{"path": paths[i], "class": scan.class_names[labels[i]]} for i in group]
        for group in label_conflicts(decoded.sha256, labels)
    ]
    report = {
        "source": scan.description,
        "n_images": len(paths),
        "class_counts": {scan.class_names[c]: per_class[c] for c in range(len(scan.class_names))},
        "image_sizes": dict(sizes.most_common()),
        # More than 8 bits are scaled to 8 by the bit depth (16-bit: / 257; leuk.data.decode.to_rgb).
        "bit_depths": dict(depths.most_common()),
        "subjects": len({r.subject for r in scan.records if r.subject is not None}),
        "exact_duplicate_pairs": [[paths[i], paths[j]] for i, j in grouping.exact_pairs],
        "near_duplicate_pairs": [[paths[i], paths[j]] for i, j in grouping.near_pairs],
        "near_duplicate_distance": distance,
        "duplicate_groups": [[paths[i] for i in g] for g in groups],
        "groups_spanning_classes": [[paths[i] for i in g] for g in groups if len({labels[i] for i in g}) > 1],
        # Byte-identical files under two classes: training refuses them unless
        # data.allow_conflicting_labels=true.
        "conflicting_labels": conflicts,
        "blank_images": blank,
        "bad_files": [{"path": p, "error": e} for p, e in decoded.bad],
        "non_image_files": scan.ignored_files,
        "unmapped_folders": scan.unmapped_folders,
        "unmapped_files": scan.unmapped_files,
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
    console.print(f"bit depths: {report['bit_depths']}")
    console.print(
        f"exact duplicate pairs: {len(report['exact_duplicate_pairs'])}; near-duplicate pairs "
        f"(distance ≤ {report['near_duplicate_distance']}): {len(report['near_duplicate_pairs'])}; "
        f"groups of 2+ images: {len(report['duplicate_groups'])} "
        f"({len(report['groups_spanning_classes'])} spanning two classes)"
    )
    for group in report["duplicate_groups"][:show_groups]:
        console.print("  " + " = ".join(Path(p).name for p in group))
    console.print(f"byte-identical images under two classes: {len(report['conflicting_labels'])}")
    for group in report["conflicting_labels"]:
        console.print("  " + " = ".join(f"{m['path']} ({m['class']})" for m in group), markup=False)
    console.print(
        f"unreadable files: {len(report['bad_files'])}; blank images: {len(report['blank_images'])}; "
        f"non-image files: {len(report['non_image_files'])}"
    )
    for bad in report["bad_files"]:
        console.print(f"  {bad['path']}: {bad['error']}", markup=False)
    for path in report["blank_images"]:
        console.print(f"  {path}: blank (one colour)", markup=False)
    unmapped = report["unmapped_folders"]
    console.print(
        f"not read: {len(unmapped)} folder(s) mapped to no class "
        f"({sum(unmapped.values())} files), {len(report['unmapped_files'])} loose file(s)"
    )
    for folder, n in unmapped.items():
        console.print(f"  {folder}/: {n} files", markup=False)
    for path in report["unmapped_files"]:
        console.print(f"  {path}", markup=False)
