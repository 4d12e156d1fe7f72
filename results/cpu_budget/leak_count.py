"""How many test images of each run have a copy (byte-identical, or near-identical at the data
config's dHash distance 4) in the run's training split: the leak a naive split lets through.

    python results/cpu_budget/leak_count.py <ALL>/Original results/cpu_budget/*/seed*
"""

import sys
from pathlib import Path

import pandas as pd

from leuk.data.decode import decode_all
from leuk.data.grouping import group_images
from leuk.data.sources import scan_class_folders

NEAR_DUPLICATE_DISTANCE = 4  # conf/data/_loader.yaml: data.near_duplicate_distance
# The hashes are of the original files; the pixels are not used, so they are decoded small.
PIXELS = 16

root = Path(sys.argv[1]).resolve()
scan = scan_class_folders(root, {p.name: p.name for p in sorted(root.iterdir()) if p.is_dir()})
decoded = decode_all([r.path for r in scan.records], PIXELS, mode="none")
groups = group_images(decoded.sha256, decoded.dhash, max_distance=NEAR_DUPLICATE_DISTANCE).groups
group_of = {
    str(Path(r.path).resolve().relative_to(root.parent)): g for r, g in zip(scan.records, groups, strict=True)
}
for run in sys.argv[2:]:
    split = pd.read_csv(Path(run) / "split.csv")
    # split.csv names images relative to the data root (exported) or absolutely (a run folder).
    relative = [
        Path(p).resolve().relative_to(root.parent) if Path(p).is_absolute() else Path(p) for p in split.path
    ]
    split["group"] = [group_of[str(p)] for p in relative]
    in_train = set(split.group[split.split == "train"])
    test = split[split.split == "test"]
    print(f"{run}: {int(test.group.isin(in_train).sum())} of {len(test)} test images have a copy in training")
