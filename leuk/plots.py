"""The run's figures as PNG files: confusion matrix, ROC curves, training curves, misclassified
images, and the evaluation's noise, coverage and Grad-CAM figures.

Figures are built with matplotlib's object API on the Agg canvas, never through pyplot: no global
figure state, no display needed, and nothing to close in a long-running process.
"""

from __future__ import annotations

import itertools
import math
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from leuk.metrics import confusion_matrix

DPI = 120


def _save(fig: Figure, path: str | Path, tight: bool = True) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI, bbox_inches="tight" if tight else None)
    return path


def _matrix_panel(ax: Axes, matrix: np.ndarray, class_names: Sequence[str], title: str, fmt: str) -> None:
    vmax = matrix.max() if matrix.size and matrix.max() > 0 else 1
    ax.imshow(matrix, cmap="Blues", vmin=0, vmax=vmax)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, labels=class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, labels=class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for (i, j), value in np.ndenumerate(matrix):
        dark = value > vmax / 2
        ax.text(j, i, format(value, fmt), ha="center", va="center", color="white" if dark else "black")


def confusion_matrix_plot(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: str | Path
) -> Path:
    """Counts beside the row-normalized matrix (each row: the share of a true class per prediction)."""
    counts = np.asarray(matrix, dtype=np.int64)
    rows = counts.sum(axis=1, keepdims=True)
    normalized = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    size = 2.5 + 0.9 * len(class_names)
    fig = Figure(figsize=(2 * size + 1, size))
    left, right = fig.subplots(1, 2)
    _matrix_panel(left, counts, class_names, "confusion matrix (counts)", "d")
    _matrix_panel(right, normalized, class_names, "row-normalized (recall on the diagonal)", ".2f")
    fig.tight_layout()
    return _save(fig, path)


def roc_plot(
    probs: np.ndarray, targets: np.ndarray, class_names: Sequence[str], path: str | Path, title: str = "ROC"
) -> Path:
    """One-vs-rest ROC curve of each class, with its area in the legend."""
    from sklearn.metrics import auc, roc_curve

    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    targets = np.asarray(targets)
    for k, name in enumerate(class_names):
        positives = targets == k
        if positives.all() or not positives.any():
            # One-sided: a ROC curve needs images of the class and of the others.
            ax.plot([], [], label=f"{name} (no ROC: {int(positives.sum())} of {len(targets)} images)")
            continue
        fpr, tpr, _ = roc_curve(positives, probs[:, k])
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate (1 − specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return _save(fig, path)


def load_history(metrics_csv: str | Path) -> list[dict[str, float]]:
    """Per-epoch train/val loss and accuracy from a CSV logger's ``metrics.csv`` (its last value of
    each column per epoch; rows of other metrics and of steps leave those columns empty)."""
    import pandas as pd

    frame = pd.read_csv(metrics_csv)
    columns = [c for c in ("train/loss", "val/loss", "train/accuracy", "val/accuracy") if c in frame]
    if "epoch" not in frame or not columns:
        return []
    per_epoch = frame.groupby("epoch")[columns].last()
    history = []
    for epoch, row in per_epoch.iterrows():
        entry = {"epoch": int(epoch), **{c: float(row[c]) for c in columns if not math.isnan(row[c])}}
        if len(entry) > 1:
            history.append(entry)
    return history


def training_curves_plot(history: Sequence[Mapping[str, float]], path: str | Path) -> Path:
    """Loss and accuracy per epoch, training and validation."""
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for ax, measure in zip(axes, ("loss", "accuracy"), strict=True):
        for stage, style in (("train", "-o"), ("val", "-s")):
            points = [(h["epoch"], h[f"{stage}/{measure}"]) for h in history if f"{stage}/{measure}" in h]
            if points:
                epochs, values = zip(*points, strict=True)
                ax.plot(epochs, values, style, label=stage, markersize=4)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(measure)
        ax.set_title(measure)
        if ax.has_data():
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no epochs recorded", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return _save(fig, path)


def image_grid_plot(
    images: Sequence[np.ndarray], titles: Sequence[str], path: str | Path, title: str, ncols: int = 5
) -> Path:
    """HWC uint8 (or float in [0, 1]) images in a grid, each with its caption.

    The grid is one mosaic in one axes: a figure of 25 small axes takes seconds to lay out.
    """
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    h = max((im.shape[0] for im in images), default=64)
    w = max((im.shape[1] for im in images), default=64)
    gap, pad = max(4, round(0.2 * h)), max(2, round(0.06 * w))
    mosaic = np.ones((nrows * (h + gap), ncols * (w + pad) - pad, 3))
    fig = Figure(figsize=(2.2 * ncols, 2.2 * ncols * mosaic.shape[0] / mosaic.shape[1] + 0.6))
    ax = fig.add_axes((0, 0, 1, 1 - 0.6 / fig.get_figheight()))
    ax.axis("off")
    anchors = []
    for k, image in enumerate(images):
        r, c = divmod(k, ncols)
        y0, x0 = r * (h + gap) + gap, c * (w + pad)
        pixels = np.asarray(image, dtype=np.float64)
        if np.asarray(image).dtype == np.uint8:
            pixels = pixels / 255.0
        mosaic[y0 : y0 + pixels.shape[0], x0 : x0 + pixels.shape[1]] = pixels[..., :3]
        anchors.append((x0 + w / 2, y0 - gap * 0.1))
    ax.imshow(mosaic, interpolation="nearest")
    for (x, y), caption in zip(anchors, titles, strict=False):
        ax.text(x, y, caption, ha="center", va="bottom", fontsize=8)
    if n == 0:
        ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
    # Wrapped to the figure's width (about 12 characters per inch at this size): a one-column grid
    # would cut a long title off.
    wrapped = textwrap.fill(title, width=max(20, int(12 * fig.get_figwidth())))
    fig.suptitle(wrapped, y=1 - 0.05 / fig.get_figheight(), va="top", fontsize=10)
    return _save(fig, path)


def most_confident_mistakes(probs: np.ndarray, targets: np.ndarray, max_images: int) -> np.ndarray:
    """The positions of at most ``max_images`` misclassified samples, most confident first."""
    preds = probs.argmax(axis=1)
    confidence = probs.max(axis=1)
    wrong = np.flatnonzero(preds != targets)
    return wrong[np.argsort(-confidence[wrong], kind="stable")][:max_images]


def misclassified_plot(
    probs: np.ndarray,
    targets: np.ndarray,
    indices: np.ndarray,
    image_of: Callable[[int], np.ndarray],
    class_names: Sequence[str],
    path: str | Path,
    max_images: int = 25,
) -> Path:
    """The misclassified images, most confident mistakes first, captioned true → predicted (p)."""
    preds = probs.argmax(axis=1)
    confidence = probs.max(axis=1)
    wrong = most_confident_mistakes(probs, targets, max_images)
    images = [image_of(int(indices[i])) for i in wrong]
    titles = [f"{class_names[targets[i]]} → {class_names[preds[i]]} ({confidence[i]:.2f})" for i in wrong]
    n_wrong = int((preds != targets).sum())
    shown = f", {len(wrong)} shown" if len(wrong) < n_wrong else ""
    return image_grid_plot(
        images, titles, path, f"misclassified: {n_wrong} of {len(targets)}{shown} (true → predicted)"
    )


def write_test_plots(
    folder: str | Path,
    outputs: Mapping[str, np.ndarray],
    class_names: Sequence[str],
    image_of: Callable[[int], np.ndarray],
    history: Sequence[Mapping[str, float]] | None = None,
    max_misclassified: int = 25,
) -> dict[str, Path]:
    """The test figures of a run (and its training curves when ``history`` is given), by name."""
    folder = Path(folder)
    probs, targets, indices = outputs["probs"], outputs["targets"], outputs["indices"]
    plots = {
        "confusion_matrix": confusion_matrix_plot(
            confusion_matrix(probs, targets, len(class_names)), class_names, folder / "confusion_matrix.png"
        ),
        "roc": roc_plot(probs, targets, class_names, folder / "roc.png", title="test ROC (one-vs-rest)"),
        "misclassified": misclassified_plot(
            probs, targets, indices, image_of, class_names, folder / "misclassified.png", max_misclassified
        ),
    }
    if history is not None:
        plots["training_curves"] = training_curves_plot(history, folder / "training_curves.png")
    return plots


def noise_plot(rows: Sequence[Mapping[str, Any]], path: str | Path, keys: Sequence[str]) -> Path:
    """Metrics against the Gaussian noise's σ (0–255 scale)."""
    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    sigmas = [r["sigma"] for r in rows]
    for key in keys:
        values = [r.get(key) for r in rows]
        if all(v is not None for v in values):
            ax.plot(sigmas, values, "-o", label=key.split("/", 1)[-1], markersize=4)
    ax.set_xlabel("noise σ (0–255 scale)")
    ax.set_ylabel("value")
    ax.set_title("Gaussian-noise robustness (test)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, path)


def coverage_plot(curve: Sequence[Mapping[str, Any]], threshold: float, path: str | Path) -> Path:
    """Coverage and accuracy on the covered part against the confidence threshold."""
    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    thresholds = [c["threshold"] for c in curve]
    ax.plot(thresholds, [c["coverage"] for c in curve], "-o", markersize=3, label="coverage")
    accuracy = [(c["threshold"], c["accuracy"]) for c in curve if c["accuracy"] is not None]
    if accuracy:
        ax.plot(*zip(*accuracy, strict=True), "-s", markersize=3, label="accuracy on covered")
    ax.axvline(threshold, color="grey", linestyle=":", label=f"threshold {threshold:g}")
    ax.set_xlabel("softmax confidence threshold")
    ax.set_ylim(0, 1.02)
    ax.set_title("abstention: coverage and accuracy")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, path)


def reliability_plot(calibration: Mapping[str, Any], path: str | Path) -> Path:
    """The reliability diagram: accuracy against mean confidence per confidence bin, the diagonal
    being perfect calibration; the title gives the ECE before (and after) temperature scaling."""
    bins = calibration["reliability"]
    edges = bins["edges"]
    fig = Figure(figsize=(5, 4.5))
    ax = fig.subplots()
    centres = [(a + b) / 2 for a, b in itertools.pairwise(edges)]
    width = edges[1] - edges[0]
    filled = [(c, a) for c, a in zip(centres, bins["accuracy"], strict=True) if a is not None]
    if filled:
        ax.bar(*zip(*filled, strict=True), width=width * 0.9, alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    title = f"reliability: ECE {calibration['ece']:.3f}"
    if calibration.get("ece_scaled") is not None:
        title += f", {calibration['ece_scaled']:.3f} at T = {calibration['temperature']:.2f}"
    ax.set_title(title, fontsize="medium")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, path)
