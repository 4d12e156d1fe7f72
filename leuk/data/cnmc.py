"""C-NMC 2019 (ISBI 2019 challenge) training data: ``C-NMC_training_data/fold_k/{all,hem}/*.bmp``.

The subject is part of each file name: ``UID_<subject>_<image>_<cell>_all.bmp`` for leukemic
blasts and ``UID_H<subject>_<image>_<cell>_hem.bmp`` for normal cells (H marks a healthy subject, a
different person from the ALL subject with the same number).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from leuk.data.sources import (
    IMAGE_EXTENSIONS,
    DataError,
    ImageRecord,
    SourceScan,
    check_root,
    count_files,
    is_listed_file,
    unmapped_entries,
    warn_unmapped,
)

log = logging.getLogger(__name__)

TOP_FOLDER = "C-NMC_training_data"
_FOLD = re.compile(r"^fold_(\d+)$")
_NAME = re.compile(r"^UID_(H?\d+)_(\d+)_(\d+)_(all|hem)$", re.IGNORECASE)


def parse_subject(path: str | Path) -> str | None:
    """The subject of a C-NMC file name (``'11'``, ``'H11'``), or None for a name of another form."""
    m = _NAME.match(Path(path).stem)
    return m.group(1).upper() if m else None


class CNMCSource:
    """The C-NMC training folds. Class folders map to labels in order: ``hem`` = 0, ``all`` = 1
    (the positive class)."""

    def __init__(
        self,
        root: str | None = None,
        folds: list[int] | None = None,
        classes: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.folds = folds
        self.classes = classes or {"hem": "HEM (normal)", "all": "ALL (blast)"}

    def resolved_root(self) -> Path:
        if not self.root:
            raise DataError("no data root given: set data.root=/path/to/C-NMC_training_data")
        root = Path(self.root).expanduser()
        if (root / TOP_FOLDER).is_dir():
            root = root / TOP_FOLDER
        return check_root(root, "C-NMC root")

    def scan(self) -> SourceScan:
        root = self.resolved_root()
        found = {int(m.group(1)): p for p in root.iterdir() if p.is_dir() and (m := _FOLD.match(p.name))}
        if not found:
            raise DataError(
                f"C-NMC root '{root}' has no fold_<k> folders (expected fold_0, fold_1, fold_2): set "
                f"data.root to the folder holding them or {TOP_FOLDER}/"
            )
        folds = sorted(found) if self.folds is None else list(self.folds)
        missing = [k for k in folds if k not in found]
        if missing:
            raise DataError(
                f"data.source.folds: fold(s) {missing} not found in '{root}' (it has {sorted(found)})"
            )
        records: list[ImageRecord] = []
        ignored: list[str] = []
        # Not read: folders beside the folds (the folds data.source.folds leaves out are a choice,
        # not counted), beside the class folders of a fold, and inside a class folder.
        fold_names = {p.name for p in found.values()}
        unmapped, loose = unmapped_entries(root, fold_names)
        unparsed = 0
        for fold in folds:
            extra, extra_files = unmapped_entries(found[fold], set(self.classes))
            unmapped.update(extra)
            loose += extra_files
            for label, folder in enumerate(self.classes):
                class_dir = found[fold] / folder
                if not class_dir.is_dir():
                    raise DataError(f"C-NMC fold folder '{found[fold]}' lacks the class folder '{folder}'")
                n_before = len(records)
                for path in sorted(class_dir.iterdir()):
                    if path.is_dir():
                        unmapped[str(path)] = count_files(path)
                        continue
                    if not is_listed_file(path):
                        continue
                    if path.suffix.lower() not in IMAGE_EXTENSIONS:
                        ignored.append(str(path))
                        continue
                    subject = parse_subject(path)
                    unparsed += subject is None
                    records.append(ImageRecord(str(path), label, subject, fold))
                if len(records) == n_before:
                    raise DataError(f"class folder '{class_dir}' holds no images")
        if unparsed:
            log.warning("%d C-NMC file names did not match UID_<subject>_…; they have no subject", unparsed)
        scan = SourceScan(
            records=records,
            class_names=list(self.classes.values()),
            folder_names=list(self.classes),
            ignored_files=ignored,
            description=f"C-NMC 2019 folds {folds} ({root})",
            unmapped_folders=unmapped,
            unmapped_files=loose,
        )
        warn_unmapped(scan, root)
        return scan

    @property
    def cache_key(self) -> str:
        return f"cnmc:{self.resolved_root()}:{self.folds}"
