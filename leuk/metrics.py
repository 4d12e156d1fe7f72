"""The metrics the papers report, as torchmetrics (synchronized across DDP ranks).

Definitions (written to metrics.json beside the values):
accuracy — micro: correct / all; balanced_accuracy — mean per-class recall; precision, recall
(sensitivity), specificity, f1 — macro: the unweighted mean of the per-class one-vs-rest values;
mcc — multiclass Matthews correlation (Gorodkin's R_K); auroc — macro one-vs-rest ROC AUC.
"""

from __future__ import annotations

from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MulticlassMatthewsCorrCoef,
    MulticlassPrecision,
    MulticlassRecall,
    MulticlassSpecificity,
)

DEFINITIONS = {
    "accuracy": "micro: correct predictions / all predictions",
    "balanced_accuracy": "macro recall: mean over classes of the per-class sensitivity",
    "precision": "macro: unweighted mean of per-class one-vs-rest precision",
    "recall": "macro: unweighted mean of per-class one-vs-rest recall (sensitivity)",
    "specificity": "macro: unweighted mean of per-class one-vs-rest specificity",
    "f1": "macro: unweighted mean of per-class one-vs-rest F1",
    "mcc": "multiclass Matthews correlation coefficient (Gorodkin's R_K)",
    "auroc": "macro one-vs-rest area under the ROC curve, from softmax probabilities",
}


def classification_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """Metrics updated with (softmax probabilities N×C, integer targets N)."""
    c = num_classes
    return MetricCollection(
        {
            "accuracy": MulticlassAccuracy(c, average="micro"),
            "balanced_accuracy": MulticlassRecall(c, average="macro"),
            "precision": MulticlassPrecision(c, average="macro"),
            "recall": MulticlassRecall(c, average="macro"),
            "specificity": MulticlassSpecificity(c, average="macro"),
            "f1": MulticlassF1Score(c, average="macro"),
            "mcc": MulticlassMatthewsCorrCoef(c),
            "auroc": MulticlassAUROC(c, average="macro"),
        },
        prefix=prefix,
    )
