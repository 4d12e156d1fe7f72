"""Every metric of ``leuk.metrics`` against scikit-learn on a fixed set of predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from leuk.metrics import DEFINITIONS, classification_metrics, compute_metrics, confusion_matrix

ALL_NAMES = ["Benign", "Early Pre-B", "Pre-B", "Pro-B"]
CNMC_NAMES = ["hem", "all"]


def fixed_predictions(num_classes: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities that are right more often than chance, with every class predicted and
    present (so no ratio divides by zero and sklearn's and torchmetrics' class sets agree).

    The classes are imbalanced (class k has about twice as many images as class k + 1): with equal
    counts a weighted mean would equal the macro mean, and a wrong average could pass.
    """
    rng = np.random.default_rng(seed)
    shares = 2.0 ** -np.arange(num_classes)
    counts = np.maximum(2, np.round(n * shares / shares.sum()).astype(int))
    counts[0] += n - counts.sum()
    targets = np.repeat(np.arange(num_classes), counts)
    rng.shuffle(targets)
    logits = rng.normal(size=(n, num_classes))
    logits[np.arange(n), targets] += 1.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert set(probs.argmax(axis=1)) == set(range(num_classes))
    return probs.astype(np.float32), targets


def sklearn_values(probs: np.ndarray, targets: np.ndarray, names: list[str]) -> dict[str, float]:
    c = len(names)
    labels = list(range(c))
    preds = probs.argmax(axis=1)
    cm = skm.confusion_matrix(targets, preds, labels=labels)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = cm.sum() - tp - fp - fn
    specificity = tn / (tn + fp)
    precision = skm.precision_score(targets, preds, labels=labels, average=None, zero_division=0)
    recall = skm.recall_score(targets, preds, labels=labels, average=None, zero_division=0)
    f1 = skm.f1_score(targets, preds, labels=labels, average=None, zero_division=0)
    auroc = [skm.roc_auc_score(targets == k, probs[:, k]) for k in labels]
    if c == 2:
        macro_auroc = skm.roc_auc_score(targets, probs[:, 1])
    else:
        macro_auroc = skm.roc_auc_score(targets, probs, multi_class="ovr", average="macro", labels=labels)
    expected = {
        "test/accuracy": skm.accuracy_score(targets, preds),
        "test/balanced_accuracy": skm.balanced_accuracy_score(targets, preds),
        "test/precision": skm.precision_score(targets, preds, average="macro", zero_division=0),
        "test/recall": skm.recall_score(targets, preds, average="macro", zero_division=0),
        "test/specificity": specificity.mean(),
        "test/f1": skm.f1_score(targets, preds, average="macro", zero_division=0),
        "test/mcc": skm.matthews_corrcoef(targets, preds),
        "test/auroc": macro_auroc,
        # The variants other papers report (issue 13, defect 7).
        "test/weighted/precision": skm.precision_score(targets, preds, average="weighted", zero_division=0),
        "test/weighted/recall": skm.recall_score(targets, preds, average="weighted", zero_division=0),
        "test/weighted/f1": skm.f1_score(targets, preds, average="weighted", zero_division=0),
        "test/auroc_hard": skm.roc_auc_score(np.eye(c)[targets], np.eye(c)[preds], average="macro"),
    }
    for k, name in enumerate(names):
        expected[f"test/precision/{name}"] = precision[k]
        expected[f"test/recall/{name}"] = recall[k]
        expected[f"test/specificity/{name}"] = specificity[k]
        expected[f"test/f1/{name}"] = f1[k]
        expected[f"test/auroc/{name}"] = auroc[k]
        for j, other in enumerate(names):
            expected[f"test/confusion/{name}/{other}"] = cm[k, j]
    if c == 2:
        expected["test/pos/precision"] = skm.precision_score(targets, preds, pos_label=1)
        expected["test/pos/recall"] = skm.recall_score(targets, preds, pos_label=1)
        expected["test/pos/specificity"] = skm.recall_score(targets, preds, pos_label=0)
        expected["test/pos/f1"] = skm.f1_score(targets, preds, pos_label=1)
        expected["test/pos/auroc"] = skm.roc_auc_score(targets, probs[:, 1])
    return {k: float(v) for k, v in expected.items()}


@pytest.mark.parametrize(("names", "n", "seed"), [(ALL_NAMES, 64, 0), (CNMC_NAMES, 50, 1)])
def test_every_metric_matches_sklearn(names: list[str], n: int, seed: int) -> None:
    probs, targets = fixed_predictions(len(names), n, seed)
    collection = classification_metrics(len(names), "test/", names)
    # Two updates, as batches arrive: the state must accumulate, not be replaced.
    half = n // 2
    collection.update(torch.from_numpy(probs[:half]), torch.from_numpy(targets[:half]))
    collection.update(torch.from_numpy(probs[half:]), torch.from_numpy(targets[half:]))
    got = {k: float(v) for k, v in collection.compute().items()}
    expected = sklearn_values(probs, targets, names)
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-5), key


def test_sklearn_comparison_can_fail() -> None:
    """The fixed set discriminates: a different prediction set gives different values."""
    probs, targets = fixed_predictions(4, 64, 0)
    shuffled = np.roll(targets, 1)
    assert compute_metrics(probs, shuffled, ALL_NAMES)["test/accuracy"] != pytest.approx(
        skm.accuracy_score(targets, probs.argmax(axis=1))
    )


def test_positive_class_keys_only_for_two_classes() -> None:
    four = compute_metrics(*fixed_predictions(4, 40, 2), ALL_NAMES)
    two = compute_metrics(*fixed_predictions(2, 40, 2), CNMC_NAMES)
    assert not any("/pos/" in k for k in four)
    assert {f"test/pos/{m}" for m in ("precision", "recall", "specificity", "f1", "auroc")} <= set(two)
    # The positive class is index 1 ('all'): its keys equal that class's per-class values.
    for m in ("precision", "recall", "specificity", "f1", "auroc"):
        assert two[f"test/pos/{m}"] == two[f"test/{m}/all"]


def test_confusion_matrix_helper_matches_sklearn() -> None:
    probs, targets = fixed_predictions(4, 64, 3)
    expected = skm.confusion_matrix(targets, probs.argmax(axis=1), labels=range(4)).tolist()
    assert confusion_matrix(probs, targets, 4) == expected


def test_every_metric_has_a_definition() -> None:
    keys = compute_metrics(*fixed_predictions(2, 40, 4), CNMC_NAMES)
    summary = {k.removeprefix("test/") for k in keys if k.count("/") == 1}
    assert summary <= set(DEFINITIONS)
    assert {"<metric>/<class>", "pos/<metric>"} <= set(DEFINITIONS)
