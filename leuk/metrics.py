"""The metrics the papers report, as torchmetrics (synchronized across DDP ranks).

One ``MetricCollection`` per stage, updated with (softmax probabilities N×C, integer targets N);
``compute()`` gives a flat dict of scalars, so every key goes to every logger as it is:

- ``<stage>/accuracy``, ``balanced_accuracy``, ``precision``, ``recall``, ``specificity``, ``f1``,
  ``mcc``, ``auroc``: one value each (micro or macro, see ``DEFINITIONS``);
- ``<stage>/<metric>/<class name>`` for precision, recall, specificity, f1 and auroc: one-vs-rest
  values per class, named by the class's display name (``test/recall/Pro-B``);
- ``<stage>/pos/<metric>`` (two-class data only) for precision, recall, specificity, f1 and auroc:
  the positive class's values (class index 1, C-NMC's ``all``);
- ``<stage>/confusion/<true class>/<predicted class>``: the confusion matrix's cells (counts);
- the variants other papers report, beside leuk's own: ``<stage>/weighted/precision``, ``recall``,
  ``f1`` (support-weighted means) and ``<stage>/auroc_hard`` (AUC of the one-hot argmax
  predictions; for two classes, (sensitivity + specificity) / 2).
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
    MulticlassStatScores,
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
    "weighted/precision": (
        "weighted: per-class one-vs-rest precision averaged with each class's support (its number of "
        "targets) as weight, scikit-learn's average='weighted'"
    ),
    "weighted/recall": (
        "weighted: per-class recall averaged with each class's support as weight; equals accuracy"
    ),
    "weighted/f1": "weighted: per-class F1 averaged with each class's support as weight",
    "auroc_hard": (
        "AUC of hard predictions: each class's one-vs-rest ROC curve drawn from the one-hot argmax "
        "prediction (one threshold), so its area is (recall + specificity) / 2 of that class; unweighted "
        "mean over the classes present in the targets (a class without targets has no ROC curve). For "
        "two classes, (sensitivity + specificity) / 2 = balanced accuracy; scikit-learn's "
        "roc_auc_score(one_hot(targets), one_hot(predictions), average='macro')"
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


class HardLabelAUROC(MulticlassStatScores):
    """``auroc_hard`` of ``DEFINITIONS``, from the summed stat scores (so it syncs like the others)."""

    def __init__(self, num_classes: int, **kwargs: Any) -> None:
        super().__init__(num_classes, average=None, **kwargs)

    def compute(self) -> Tensor:
        tp, fp, tn, fn = (s.float() for s in self._final_state())
        positives, negatives = tp + fn, tn + fp
        defined = (positives > 0) & (negatives > 0)
        if not bool(defined.any()):
            return torch.tensor(float("nan"))
        auc = (tp / positives.clamp(min=1) + tn / negatives.clamp(min=1)) / 2
        return auc[defined].mean()


def _per_class(metric: Metric, name: str, class_names: Sequence[str]) -> _Cells:
    return _Cells(metric, [f"{name}/{c}" for c in class_names], range(len(class_names)))


def _positive(metric: Metric, name: str) -> _Cells:
    return _Cells(metric, [f"pos/{name}"], [POSITIVE_CLASS])


def _confusion_cells(num_classes: int, class_names: Sequence[str], **kw: Any) -> _Cells:
    pairs = [(t, p) for t in range(num_classes) for p in range(num_classes)]
    names = [f"confusion/{class_names[t]}/{class_names[p]}" for t, p in pairs]
    return _Cells(MulticlassConfusionMatrix(num_classes, **kw), names, pairs)


def classification_metrics(
    num_classes: int,
    prefix: str,
    class_names: Sequence[str] | None = None,
    sync_on_compute: bool = True,
) -> MetricCollection:
    """Metrics updated with (softmax probabilities N×C, integer targets N); see the module doc.

    ``sync_on_compute=False``: ``compute()`` uses this process's updates only, without waiting for
    the other DDP ranks (predictions one rank made on its own, as the noise table's).
    """
    c = num_classes
    kw = {"sync_on_compute": sync_on_compute}
    names = list(class_names) if class_names is not None else [str(i) for i in range(c)]
    if len(names) != c:
        raise ValueError(f"{len(names)} class names for {c} classes")
    metrics: dict[str, Metric] = {
        "accuracy": MulticlassAccuracy(c, average="micro", **kw),
        "balanced_accuracy": MulticlassRecall(c, average="macro", **kw),
        "precision": MulticlassPrecision(c, average="macro", **kw),
        "recall": MulticlassRecall(c, average="macro", **kw),
        "specificity": MulticlassSpecificity(c, average="macro", **kw),
        "f1": MulticlassF1Score(c, average="macro", **kw),
        "mcc": MulticlassMatthewsCorrCoef(c, **kw),
        "auroc": MulticlassAUROC(c, average="macro", **kw),
        "confusion": _confusion_cells(c, names, **kw),
        # The variants other papers report (see DEFINITIONS), beside leuk's macro values.
        "weighted/precision": MulticlassPrecision(c, average="weighted", **kw),
        "weighted/recall": MulticlassRecall(c, average="weighted", **kw),
        "weighted/f1": MulticlassF1Score(c, average="weighted", **kw),
        "auroc_hard": HardLabelAUROC(c, **kw),
    }
    kinds = {
        "precision": MulticlassPrecision,
        "recall": MulticlassRecall,
        "specificity": MulticlassSpecificity,
        "f1": MulticlassF1Score,
        "auroc": MulticlassAUROC,
    }
    for name in PER_CLASS:
        metrics[f"{name}_per_class"] = _per_class(kinds[name](c, average=None, **kw), name, names)
        if c == 2:
            metrics[f"{name}_positive"] = _positive(kinds[name](c, average=None, **kw), name)
    return MetricCollection(metrics, prefix=prefix)


def compute_metrics(
    probs: np.ndarray | Tensor,
    targets: np.ndarray | Tensor,
    class_names: Sequence[str],
    prefix: str = "test/",
) -> dict[str, float]:
    """The collection's values for one set of predictions (evaluation outside Lightning), without
    the confusion cells (``confusion_matrix`` gives the matrix).

    The predictions are all here, so nothing is gathered from other DDP ranks: rank 0 may call this
    alone (the noise table after a DDP test) without waiting for ranks that never call it."""
    probs_t = torch.tensor(np.asarray(probs), dtype=torch.float32)
    targets_t = torch.tensor(np.asarray(targets), dtype=torch.long)
    collection = classification_metrics(len(class_names), prefix, class_names, sync_on_compute=False)
    collection.update(probs_t, targets_t)
    return {k: float(v) for k, v in collection.compute().items() if not is_confusion_key(k)}


def is_confusion_key(key: str) -> bool:
    return "/confusion/" in key or key.startswith("confusion/")


def is_per_class_key(key: str) -> bool:
    """``<stage>/<metric>/<class name>``: one class's value of a ``PER_CLASS`` metric (not
    ``pos/<metric>`` nor ``weighted/<metric>``)."""
    parts = key.split("/")
    return len(parts) >= 3 and parts[1] in PER_CLASS


def confusion_matrix(
    probs: np.ndarray | Tensor, targets: np.ndarray | Tensor, num_classes: int
) -> list[list[int]]:
    """Counts, row = true class, column = predicted class."""
    preds = np.asarray(probs).argmax(axis=1)
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(targets, dtype=np.int64), preds), 1)
    return matrix.tolist()


def mean_per_image(probs: np.ndarray, owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-lesion predictions (ALDL) as one prediction per image: the images present in ``owner``
    (each patch's image index), ascending, and each one's mean of its patches' probabilities."""
    ids, inverse = np.unique(np.asarray(owner), return_inverse=True)
    means = np.zeros((len(ids), probs.shape[1]), np.float64)
    np.add.at(means, inverse, probs)
    means /= np.bincount(inverse)[:, None]
    return ids, means
