"""Image sources: a scan of a folder of class sub-folders into labelled records.

Nothing is dropped silently: a missing root, a root without class folders and an empty class folder
are errors naming the path; files that are not images are ignored and counted.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from leuk.utils.errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class DataError(UserError, ValueError):
    """The data on disk does not match what the config says."""


@dataclass(frozen=True)
class ImageRecord:
    """One image: its absolute path, its class index and, where the source knows it, its subject."""

    path: str
    label: int
    subject: str | None = None
    fold: int | None = None


@dataclass
class SourceScan:
    """What a source found: the records, the display names of the classes and what it ignored."""

    records: list[ImageRecord]
    class_names: list[str]
    folder_names: list[str]
    ignored_files: list[str] = field(default_factory=list)
    description: str = ""


def _class_mapping(root: Path, classes: Mapping[str, str] | Sequence[str] | None) -> dict[str, str]:
    if classes is None:
        folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            raise DataError(
                f"data root '{root}' has no class sub-folders; expected one folder per class "
                "(e.g. Benign/, Early/, Pre/, Pro/)"
            )
        return {f: f for f in folders}
    if isinstance(classes, Mapping):
        return {str(k): str(v) for k, v in classes.items()}
    return {str(c): str(c) for c in classes}


def scan_class_folders(
    root: str | Path,
    classes: Mapping[str, str] | Sequence[str] | None = None,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> SourceScan:
    """List the images of ``root/<class folder>/*`` in a fixed (sorted) order.

    ``classes`` maps folder names to display names in label order (a list keeps folder names);
    ``None`` takes every sub-folder in sorted order.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"data root '{root}' does not exist (set data.root)")
    if not root.is_dir():
        raise DataError(f"data root '{root}' is not a folder")
    root = root.resolve()
    mapping = _class_mapping(root, classes)
    missing = [f for f in mapping if not (root / f).is_dir()]
    if missing:
        present = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DataError(
            f"data root '{root}' lacks the class folder(s) {missing}; it has {present or 'no folders'}"
        )
    exts = {e.lower() for e in extensions}
    records: list[ImageRecord] = []
    ignored: list[str] = []
    for label, folder in enumerate(mapping):
        n_before = len(records)
        for path in sorted((root / folder).rglob("*")):
            if not path.is_file():
                continue
            if path.suffix.lower() in exts:
                records.append(ImageRecord(str(path), label))
            else:
                ignored.append(str(path))
        if len(records) == n_before:
            raise DataError(f"class folder '{root / folder}' holds no images ({', '.join(sorted(exts))})")
    if ignored:
        log.warning("ignored %d non-image files under %s (e.g. %s)", len(ignored), root, ignored[0])
    return SourceScan(
        records=records,
        class_names=list(mapping.values()),
        folder_names=list(mapping),
        ignored_files=ignored,
        description=str(root),
    )


class FolderSource:
    """Any ImageFolder-style root: one sub-folder per class (``data=folder data.root=...``).

    ``variant`` names an optional level between the root and the class folders (the ALL download
    holds ``Original/`` and ``Segmented/``): it is used when the root has it, so ``data.root`` may
    point at either level.
    """

    def __init__(
        self,
        root: str | None = None,
        classes: dict[str, str] | list[str] | None = None,
        variant: str | None = None,
        extensions: list[str] | None = None,
    ) -> None:
        self.root = root
        self.classes = classes
        self.variant = variant
        self.extensions = tuple(extensions) if extensions else IMAGE_EXTENSIONS

    def resolved_root(self) -> Path:
        if not self.root:
            raise DataError("no data root given: set data.root=/path/to/the/dataset")
        root = Path(self.root).expanduser()
        if self.variant and (root / self.variant).is_dir():
            return root / self.variant
        return root

    def scan(self) -> SourceScan:
        return scan_class_folders(self.resolved_root(), self.classes, self.extensions)

    @property
    def cache_key(self) -> str:
        return f"folder:{self.resolved_root().resolve()}"
