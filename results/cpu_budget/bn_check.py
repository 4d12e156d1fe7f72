"""Is a run's test collapse a BatchNorm gap? The tested checkpoint on its run's test split twice:
as saved (BatchNorm's running statistics, as training and ``leuk.eval`` test it), and with every
BatchNorm layer's statistics recomputed for the final weights: a cumulative average over
``n_images`` training images of the run's split (their patches shuffled into batches, no
augmentation), the weights untouched. A large gain says the running statistics did not follow
the weights (they average the last ~10 steps at momentum 0.1), not that the model did not learn.
The training images are scored too: as saved, and after the recomputation (on the very patches
the statistics came from).

    python results/cpu_budget/bn_check.py <run>/checkpoints/<tested>.ckpt [n_images=500]
"""

import sys

import numpy as np
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from leuk.checkpoints import load_trained
from leuk.data.prediction import PredictionDataModule
from leuk.metrics import compute_metrics, mean_per_image
from leuk.predictions import load_split, predict_probs, prediction_trainer, preprocess_for_run, run_dir_of

ckpt = sys.argv[1]
n_images = int(sys.argv[2]) if len(sys.argv) > 2 else 500
SEED = 0

trained = load_trained(ckpt)
run_dir = run_dir_of(ckpt)
split = load_split(run_dir)
preprocess = preprocess_for_run(run_dir, split, trained.preprocess_steps)
trainer = prediction_trainer(torch.device("cpu"))


def decoded(rows) -> PredictionDataModule:
    data = PredictionDataModule(
        rows.path.tolist(), trained.image_size, labels=rows.label.to_numpy(), preprocess=preprocess
    )
    data.setup()
    return data


def scores(data: PredictionDataModule) -> dict[str, object]:
    """Accuracy, MCC and predictions per class, per sample and (per-lesion runs) per image, the
    image the mean of its patches as in training's ``test_image/*``; one prediction pass."""
    samples = predict_probs(trainer, trained.module, data, per_sample=True)
    units = [("sample", samples, data.sample_labels)]
    if data.owner is not None:
        units.append(("image", mean_per_image(samples, data.owner)[1], data.labels))
    out: dict[str, object] = {}
    for unit, probs, labels in units:
        values = compute_metrics(probs, labels, trained.class_names, prefix="")
        out |= {f"{unit} accuracy": values["accuracy"], f"{unit} mcc": values["mcc"]}
        out[f"{unit} predicted per class"] = np.bincount(probs.argmax(1), minlength=len(trained.class_names))
    return out


test = decoded(split[split.split == "test"])
train = decoded(split[split.split == "train"].sample(n_images, random_state=SEED))
before = {"test": scores(test), "train": scores(train)}

calibration = train.images[np.random.default_rng(SEED).permutation(len(train.images))]
norms = [m for m in trained.module.modules() if isinstance(m, _BatchNorm)]
for norm in norms:
    norm.reset_running_stats()
    norm.momentum = None  # a cumulative average over every batch below
trained.module.eval()
for norm in norms:
    norm.train()  # BatchNorm only: dropout stays off
with torch.no_grad():
    for start in range(0, len(calibration), 32):
        batch = np.ascontiguousarray(calibration[start : start + 32])
        trained.module(torch.from_numpy(batch).permute(0, 3, 1, 2))
trained.module.eval()
after = {"test": scores(test), "train": scores(train)}

print(f"{ckpt}: {len(test.labels)} test images, {len(test.images)} samples")
print(f"BatchNorm statistics recomputed on {len(calibration)} samples of {n_images} training images")
print(f"classes: {trained.class_names}")
for part, values in before.items():
    for key, value in values.items():
        print(f"{part + ' ' + key:>34}: as saved {value}  recomputed {after[part][key]}")
