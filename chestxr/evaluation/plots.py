"""Evaluation figures: ROC, precision-recall, confusion matrix and reliability diagram.

Figures are built as ``matplotlib.figure.Figure`` objects (no pyplot, no global backend change)
and saved atomically as PNG. Each function returns the path it wrote.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from chestxr.evaluation._arrays import as_label_prob
from chestxr.evaluation.calibration import reliability_curve
from chestxr.utils.files import atomic_write

Curve = tuple[str, Sequence[float] | np.ndarray, Sequence[float] | np.ndarray]
_DPI = 110


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=_DPI), overwrite=True)


def _both_classes(labels: np.ndarray) -> bool:
    return 0 < labels.sum() < labels.size


def plot_roc(
    path: str | os.PathLike,
    curves: Sequence[Curve],
    band: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    operating_points: Mapping[str, float] | None = None,
    title: str = "ROC curve",
) -> Path:
    """ROC curves, with optional bootstrap bands and operating points.

    Args:
        path: PNG to write.
        curves: ``(name, y_true, y_prob)`` per curve (NaN labels masked).
        band: ``{name: {"fpr", "low", "high"}}`` as returned by
            :func:`chestxr.evaluation.bootstrap.roc_band`.
        operating_points: ``{name: threshold}``; the point (1 - specificity, sensitivity) at that
            threshold is marked.
        title: axes title.

    Returns:
        ``path``.
    """
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey", label="chance")
    for name, y_true, y_prob in curves:
        labels, probs, _ = as_label_prob(y_true, y_prob)
        if not _both_classes(labels):
            continue
        fpr, tpr, _ = roc_curve(labels, probs)
        auc = roc_auc_score(labels, probs)
        (line,) = ax.plot(fpr, tpr, lw=1.5, label=f"{name} (AUC {auc:.3f})")
        if band and name in band:
            b = band[name]
            ax.fill_between(b["fpr"], b["low"], b["high"], color=line.get_color(), alpha=0.2, lw=0)
        if operating_points and name in operating_points:
            pred = probs >= operating_points[name]
            sens = pred[labels == 1].mean()
            fpr_op = pred[labels == 0].mean()
            ax.plot(fpr_op, sens, "o", color=line.get_color(), mec="black", ms=7)
            ax.annotate(
                f"t={operating_points[name]:.3g}",
                (fpr_op, sens),
                textcoords="offset points",
                xytext=(8, -12),
                fontsize=8,
            )
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity", ylabel="sensitivity", title=title)
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_pr(
    path: str | os.PathLike,
    curves: Sequence[Curve],
    operating_points: Mapping[str, float] | None = None,
    title: str = "Precision-recall curve",
) -> Path:
    """Precision-recall curves with the prevalence of each output as its chance line.

    Args:
        path: PNG to write.
        curves: ``(name, y_true, y_prob)`` per curve.
        operating_points: ``{name: threshold}`` to mark (recall, precision) at that threshold.
        title: axes title.

    Returns:
        ``path``.
    """
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    for name, y_true, y_prob in curves:
        labels, probs, _ = as_label_prob(y_true, y_prob)
        if labels.sum() == 0:
            continue
        precision, recall, _ = precision_recall_curve(labels, probs)
        ap = average_precision_score(labels, probs)
        (line,) = ax.step(recall, precision, where="post", lw=1.5, label=f"{name} (AP {ap:.3f})")
        ax.axhline(labels.mean(), ls="--", lw=0.8, color=line.get_color())
        if operating_points and name in operating_points:
            pred = probs >= operating_points[name]
            if pred.any():
                ax.plot(
                    pred[labels == 1].mean(),
                    labels[pred].mean(),
                    "o",
                    color=line.get_color(),
                    mec="black",
                    ms=7,
                )
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall (sensitivity)", ylabel="precision (PPV)")
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion_matrix(
    path: str | os.PathLike,
    cm: Sequence[Sequence[int]] | np.ndarray,
    class_names: Sequence[str],
    title: str = "Confusion matrix",
) -> Path:
    """Confusion matrix with counts and row percentages (rows: truth, columns: prediction).

    Args:
        path: PNG to write.
        cm: square matrix of counts, ``[[tn, fp], [fn, tp]]`` for a binary output.
        class_names: one name per row/column.
        title: axes title.

    Returns:
        ``path``.

    Raises:
        ValueError: ``cm`` is not square or does not match ``class_names``.
    """
    matrix = np.asarray(cm, dtype=np.int64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or len(class_names) != len(matrix):
        raise ValueError(
            f"cm of shape {matrix.shape} does not match class_names {list(class_names)}"
        )
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    fig = Figure(figsize=(4.5, 4))
    ax = fig.add_subplot()
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(matrix)):
        for j in range(len(matrix)):
            ax.text(
                j,
                i,
                f"{matrix[i, j]}\n{100 * share[i, j]:.1f}%",
                ha="center",
                va="center",
                color="white" if share[i, j] > 0.6 else "black",
            )
    ticks = np.arange(len(matrix))
    ax.set_xticks(ticks, labels=list(class_names))
    ax.set_yticks(ticks, labels=list(class_names))
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    return _save(fig, path)


def plot_reliability(
    path: str | os.PathLike,
    curves: Sequence[Curve],
    n_bins: int = 10,
    title: str = "Reliability diagram",
) -> Path:
    """Reliability diagram (observed frequency versus mean predicted probability per bin) above
    a histogram of the predictions.

    Args:
        path: PNG to write.
        curves: ``(name, y_true, y_prob)`` per curve.
        n_bins: equal-width bins (see :mod:`chestxr.evaluation.calibration`).
        title: title of the upper axes.

    Returns:
        ``path``.
    """
    fig = Figure(figsize=(5.5, 6.5))
    ax, hist = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey", label="perfect calibration")
    for name, y_true, y_prob in curves:
        rc = reliability_curve(y_true, y_prob, n_bins)
        pts = [
            (m, f)
            for m, f in zip(rc["mean_predicted"], rc["observed_frequency"], strict=True)
            if m is not None
        ]
        if not pts:
            continue
        (line,) = ax.plot(*zip(*pts, strict=True), "o-", lw=1.2, ms=4, label=name)
        hist.stairs(rc["counts"], rc["bin_edges"], color=line.get_color(), lw=1.2)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), ylabel="observed frequency", title=title)
    ax.legend(loc="upper left", fontsize=8)
    hist.set(xlabel="predicted probability", ylabel="scans")
    fig.tight_layout()
    return _save(fig, path)
