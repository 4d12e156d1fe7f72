"""Image sources: a scan of a folder of class sub-folders into labelled records.

Nothing is dropped silently: a missing root, a root without class folders and an empty class folder
are errors naming the path and ``data.root``; files that are not images are ignored and counted, and
so are the folders (and files) beside the class folders that the config maps to no class. A broken
symbolic link with an image extension is an image record: decoding lists it as unreadable.
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
    # Folders the config maps to no class (path -> number of files below it) and files lying beside
    # the class folders: not read, so counted and named (the log, metrics.json, inspect).
    unmapped_folders: dict[str, int] = field(default_factory=dict)
    unmapped_files: list[str] = field(default_factory=list)

    @property
    def n_unmapped_files(self) -> int:
        """Files not read because no class folder holds them (inside unmapped folders or loose)."""
        return sum(self.unmapped_folders.values()) + len(self.unmapped_files)


def is_listed_file(path: Path) -> bool:
    """A file, or a symbolic link to one or to nothing: a broken link is listed (and then reported
    as unreadable), not skipped as if it were no file."""
    if path.is_symlink():
        return not path.is_dir()
    return path.is_file()


def count_files(folder: Path) -> int:
    """Files (broken links included) anywhere below ``folder``."""
    return sum(1 for p in folder.rglob("*") if is_listed_file(p))


def unmapped_entries(folder: Path, mapped: set[str]) -> tuple[dict[str, int], list[str]]:
    """The sub-folders of ``folder`` not named in ``mapped`` (path -> files below) and its files."""
    folders: dict[str, int] = {}
    files: list[str] = []
    for p in sorted(folder.iterdir()):
        if p.is_dir():
            if p.name not in mapped:
                folders[str(p)] = count_files(p)
        elif is_listed_file(p):
            files.append(str(p))
    return folders, files


def warn_unmapped(scan: SourceScan, root: Path) -> None:
    """One warning naming what the scan of ``root`` did not read (none when it read everything)."""
    if scan.unmapped_folders:
        log.warning(
            "ignored %d folder(s) under %s that map to no class (class folders: %s): %s; they are "
            "not read (map them to a class in the data config, or move them out of data.root)",
            len(scan.unmapped_folders),
            root,
            scan.folder_names,
            ", ".join(f"{Path(f).name}/ ({n} files)" for f, n in scan.unmapped_folders.items()),
        )
    if scan.unmapped_files:
        log.warning(
            "ignored %d file(s) beside the class folders under %s (not in any class folder), e.g. %s",
            len(scan.unmapped_files),
            root,
            Path(scan.unmapped_files[0]).name,
        )


def _class_mapping(root: Path, classes: Mapping[str, str] | Sequence[str] | None) -> dict[str, str]:
    if classes is None:
        folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            raise DataError(
                f"data root '{root}' has no class sub-folders; expected one folder per class "
                "(e.g. Benign/, Early/, Pre/, Pro/): set data.root to their parent folder"
            )
        return {f: f for f in folders}
    if isinstance(classes, Mapping):
        return {str(k): str(v) for k, v in classes.items()}
    return {str(c): str(c) for c in classes}


def scan_class_folders(
    root: str | Path,
    classes: Mapping[str, str] | Sequence[str] | None = None,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    own_files: Sequence[str] = (),
) -> SourceScan:
    """List the images of ``root/<class folder>/*`` in a fixed (sorted) order.

    ``classes`` maps folder names to display names in label order (a list keeps folder names);
    ``None`` takes every sub-folder in sorted order. ``own_files``: names of files beside the class
    folders that belong to the source (a generator's spec), not counted as unread.
    """
    root = check_root(root)
    mapping = _class_mapping(root, classes)
    missing = [f for f in mapping if not (root / f).is_dir()]
    if missing:
        present = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DataError(
            f"data root '{root}' lacks the class folder(s) {missing}; it has {present or 'no folders'} "
            "(set data.root to the folder holding the class folders, or data.source.classes)"
        )
    exts = {e.lower() for e in extensions}
    records: list[ImageRecord] = []
    ignored: list[str] = []
    for label, folder in enumerate(mapping):
        n_before = len(records)
        for path in sorted((root / folder).rglob("*")):
            if not is_listed_file(path):
                continue
            if path.suffix.lower() in exts:
                records.append(ImageRecord(str(path), label))
            else:
                ignored.append(str(path))
        if len(records) == n_before:
            raise DataError(f"class folder '{root / folder}' holds no images ({', '.join(sorted(exts))})")
    if ignored:
        log.warning("ignored %d non-image files under %s (e.g. %s)", len(ignored), root, ignored[0])
    unmapped, loose = unmapped_entries(root, set(mapping))
    loose = [f for f in loose if Path(f).name not in own_files]
    scan = SourceScan(
        records=records,
        class_names=list(mapping.values()),
        folder_names=list(mapping),
        ignored_files=ignored,
        description=str(root),
        unmapped_folders=unmapped,
        unmapped_files=loose,
    )
    warn_unmapped(scan, root)
    return scan


def check_root(root: str | Path, what: str = "data root") -> Path:
    """``root`` resolved, or a ``DataError`` naming it and ``data.root`` (the key that sets it)."""
    given = Path(root).expanduser()
    shown = given if given.is_absolute() else f"{given} (= {given.absolute()})"
    if not given.exists():
        raise DataError(
            f"{what} '{shown}' does not exist: set data.root=/path/to/the/dataset (the data configs' "
            "default root lies under $LEUK_DATA_DIR)"
        )
    if not given.is_dir():
        raise DataError(f"{what} '{shown}' is not a folder: set data.root to the data set's folder")
    return given.resolve()


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
