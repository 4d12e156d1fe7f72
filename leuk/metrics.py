"""The metrics the papers report, as torchmetrics (synchronized across DDP ranks).

One ``MetricCollection`` per stage, updated with (softmax probabilities N×C, integer targets N);
``compute()`` gives a flat dict of scalars, so every key goes to every logger as it is:

- ``<stage>/accuracy``, ``balanced_accuracy``, ``precision``, ``recall``, ``specificity``, ``f1``,
  ``mcc``, ``auroc``: one value each (micro or macro, see ``DEFINITIONS``);
- ``<stage>/<metric>/<class name>`` for precision, recall, specificity, f1 and auroc: one-vs-rest
  values per class, named by the class's display name (``test/recall/Pro-B``);
- ``<stage>/pos/<metric>`` (two-class data only) for precision, recall, specificity, f1 and auroc:
  the positive class's values (class index 1, C-NMC's ``all``);
- ``<stage>/confusion/<true class>/<predicted class>``: the confusion matrix's cells (counts).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassMatthewsCorrCoef,
    MulticlassPrecision,
    MulticlassRecall,
    MulticlassSpecificity,
)
from torchmetrics.wrappers import ClasswiseWrapper

# The class index of two-class data that ``pos/*`` reports (C-NMC: hem = 0, all = 1).
POSITIVE_CLASS = 1
PER_CLASS = ("precision", "recall", "specificity", "f1", "auroc")

DEFINITIONS = {
    "accuracy": "micro: correct predictions / all predictions",
    "balanced_accuracy": "macro recall: mean over classes of the per-class sensitivity",
    "precision": "macro: unweighted mean of per-class one-vs-rest precision",
    "recall": "macro: unweighted mean of per-class one-vs-rest recall (sensitivity)",
    "specificity": "macro: unweighted mean of per-class one-vs-rest specificity",
    "f1": "macro: unweighted mean of per-class one-vs-rest F1",
    "mcc": "multiclass Matthews correlation coefficient (Gorodkin's R_K)",
    "auroc": "macro one-vs-rest area under the ROC curve, from softmax probabilities",
    "<metric>/<class>": (
        "precision, recall, specificity, f1, auroc of one class, one-vs-rest (that class against all "
        "others), named by the class's display name"
    ),
    "pos/<metric>": (
        "two-class data only: precision, recall (sensitivity), specificity, f1, auroc of the positive "
        f"class (index {POSITIVE_CLASS}, C-NMC's 'all') against the other"
    ),
    "confusion_matrix": "counts; row = true class, column = predicted class (argmax of the probabilities)",
    "zero_division": "a ratio whose denominator is 0 (a class never predicted, say) counts as 0",
    "macro_absent_classes": "a class absent from both targets and predictions is left out of macro means",
}


class _Cells(ClasswiseWrapper):
    """A wrapped metric's tensor output as named scalars (torchmetrics flattens dict outputs)."""

    def __init__(self, metric: Metric, names: Sequence[str], select: Any) -> None:
        super().__init__(metric)
        self._names = list(names)
        self._select = select

    def _convert_output(self, x: Tensor) -> dict[str, Tensor]:
        return {name: x[idx] for name, idx in zip(self._names, self._select, strict=True)}

    def compute(self) -> dict[str, Tensor]:
        # In a compute group the collection gives the wrapped metric the group's state but gives
        # only the wrapper its update count: without this, torchmetrics warns of a compute before
        # any update although the state is there.
        self.metric._update_count = max(self.metric._update_count, self._update_count)
        return super().compute()


def _per_class(metric: Metric, name: str, class_names: Sequence[str]) -> _Cells:
    return _Cells(metric, [f"{name}/{c}" for c in class_names], range(len(class_names)))


def _positive(metric: Metric, name: str) -> _Cells:
    return _Cells(metric, [f"pos/{name}"], [POSITIVE_CLASS])


def _confusion_cells(num_classes: int, class_names: Sequence[str]) -> _Cells:
    pairs = [(t, p) for t in range(num_classes) for p in range(num_classes)]
    names = [f"confusion/{class_names[t]}/{class_names[p]}" for t, p in pairs]
    return _Cells(MulticlassConfusionMatrix(num_classes), names, pairs)


def classification_metrics(
    num_classes: int, prefix: str, class_names: Sequence[str] | None = None
) -> MetricCollection:
    """Metrics updated with (softmax probabilities N×C, integer targets N); see the module doc."""
    c = num_classes
    names = list(class_names) if class_names is not None else [str(i) for i in range(c)]
    if len(names) != c:
        raise ValueError(f"{len(names)} class names for {c} classes")
    metrics: dict[str, Metric] = {
        "accuracy": MulticlassAccuracy(c, average="micro"),
        "balanced_accuracy": MulticlassRecall(c, average="macro"),
        "precision": MulticlassPrecision(c, average="macro"),
        "recall": MulticlassRecall(c, average="macro"),
        "specificity": MulticlassSpecificity(c, average="macro"),
        "f1": MulticlassF1Score(c, average="macro"),
        "mcc": MulticlassMatthewsCorrCoef(c),
        "auroc": MulticlassAUROC(c, average="macro"),
        "confusion": _confusion_cells(c, names),
    }
    kinds = {
        "precision": MulticlassPrecision,
        "recall": MulticlassRecall,
        "specificity": MulticlassSpecificity,
        "f1": MulticlassF1Score,
        "auroc": MulticlassAUROC,
    }
    for name in PER_CLASS:
        metrics[f"{name}_per_class"] = _per_class(kinds[name](c, average=None), name, names)
        if c == 2:
            metrics[f"{name}_positive"] = _positive(kinds[name](c, average=None), name)
    return MetricCollection(metrics, prefix=prefix)


def compute_metrics(
    probs: np.ndarray | Tensor,
    targets: np.ndarray | Tensor,
    class_names: Sequence[str],
    prefix: str = "test/",
) -> dict[str, float]:
    """The collection's values for one set of predictions (evaluation outside Lightning), without
    the confusion cells (``confusion_matrix`` gives the matrix)."""
    probs_t = torch.tensor(np.asarray(probs), dtype=torch.float32)
    targets_t = torch.tensor(np.asarray(targets), dtype=torch.long)
    collection = classification_metrics(len(class_names), prefix, class_names)
    collection.update(probs_t, targets_t)
    return {k: float(v) for k, v in collection.compute().items() if not is_confusion_key(k)}


def is_confusion_key(key: str) -> bool:
    return "/confusion/" in key or key.startswith("confusion/")


def confusion_matrix(
    probs: np.ndarray | Tensor, targets: np.ndarray | Tensor, num_classes: int
) -> list[list[int]]:
    """Counts, row = true class, column = predicted class."""
    preds = np.asarray(probs).argmax(axis=1)
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(targets, dtype=np.int64), preds), 1)
    return matrix.tolist()
