"""How far colour alone separates the classes: a logistic regression on each image's colour
statistics, fitted on a run's training split and scored on its test split (the run's split.csv,
so the probe sees the same leakage-safe images as the network). Four feature sets: the whole
image, the stained cell only, the background only (outside the cell mask that the background
shift and ``background=randomize`` use) and the background far from any cell. A background that
predicts the class is a cue a network can learn that says nothing about the cell (classes stained
or imaged in batches of their own, or one patient's images on both sides of the split).

    python results/cpu_budget/colour_probe.py <ALL> results/cpu_budget/resnet18/seed*
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from leuk.data.decode import decode_all
from leuk.preprocess.background import cell_mask

# The results table's input size; the background shift's dilation (conf/eval.yaml), and a wider
# one that leaves out the cytoplasm and the cell's halo however far they reach.
PIXELS = 128
DILATION = 4.0
FAR_DILATION = 12.0
BINS = 8
SETS = ("whole image", "cell only", "background only", f"background ≥ {FAR_DILATION:g} px away")


def colour_features(pixels: np.ndarray) -> np.ndarray:
    """Per RGB channel: mean, standard deviation and an 8-bin histogram (as fractions)."""
    if len(pixels) == 0:
        return np.zeros(3 * (2 + BINS))
    values = pixels.astype(np.float64)
    hist = [np.histogram(values[:, c], bins=BINS, range=(0, 256))[0] / len(values) for c in range(3)]
    return np.concatenate([values.mean(0), values.std(0), *hist])


def image_features(image: np.ndarray) -> dict[str, np.ndarray]:
    mask = cell_mask(image, DILATION).reshape(-1)
    far = cell_mask(image, FAR_DILATION).reshape(-1)
    flat = image.reshape(-1, 3)
    return dict(zip(SETS, map(colour_features, (flat, flat[mask], flat[~mask], flat[~far])), strict=True))


data_root = Path(sys.argv[1]).resolve()
splits = {Path(run): pd.read_csv(Path(run) / "split.csv") for run in sys.argv[2:]}
for split in splits.values():
    # split.csv names images relative to the data root (exported) or absolutely (a run folder).
    split["abs"] = [str(p if Path(p).is_absolute() else data_root / p) for p in split.path]
paths = sorted({p for split in splits.values() for p in split["abs"]})
decoded = decode_all(paths, PIXELS, mode="memory")
features = {path: image_features(image) for path, image in zip(paths, decoded.images, strict=True)}

rows = []
for run, split in splits.items():
    train, test = split[split.split == "train"], split[split.split == "test"]
    majority = test.label.value_counts().max() / len(test)
    row = {"run": str(run), "n_train": len(train), "n_test": len(test), "majority class": majority}
    for name in SETS:
        x_train = np.stack([features[p][name] for p in train["abs"]])
        x_test = np.stack([features[p][name] for p in test["abs"]])
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
        probe.fit(x_train, train.label.to_numpy())
        row[name] = float((probe.predict(x_test) == test.label.to_numpy()).mean())
    rows.append(row)

table = pd.DataFrame(rows)
print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
means = table[["majority class", *SETS]]
print("mean ± std over runs:", {k: f"{means[k].mean():.3f} ± {means[k].std():.3f}" for k in means})

# What the probe reads: each class's mean background colour (outside the wider mask), over its images.
labels = {}
for split in splits.values():
    labels.update(zip(split["abs"], split.class_name, strict=True))
far_set = SETS[-1]
colours = pd.DataFrame(
    [(labels[p], *features[p][far_set][:6]) for p in paths],
    columns=["class", "mean R", "mean G", "mean B", "std R", "std G", "std B"],
)
print(f"\n{far_set}, per class (0-255, mean over images):")
print(colours.groupby("class").mean().to_string(float_format=lambda v: f"{v:.1f}"))
