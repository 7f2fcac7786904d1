"""Binary classification metrics at an operating point, plain and resample-weighted.

:func:`binary_metrics` computes the metrics of one output with scikit-learn.
:func:`weighted_binary_metrics` computes the same numbers for a batch of integer weight vectors
at once (weight = how many times a scan was drawn by a bootstrap resample), so that 1000
bootstrap resamples cost a few matrix products instead of 1000 scikit-learn calls. With all
weights 1 both agree to floating-point precision (tested).

A scan is predicted positive when ``prob >= threshold``. Undefined values (sensitivity without
positives, PPV without predicted positives, AUC with one class, ...) are None, never NaN.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    roc_auc_score,
)

from chestxr.evaluation._arrays import as_label_prob, none_if_nan
from chestxr.evaluation.calibration import bin_indices, expected_calibration_error

#: Scalar metrics that have confidence intervals (the bootstrap resamples them).
SCALAR_METRICS = (
    "roc_auc",
    "average_precision",
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "f1",
    "accuracy",
    "brier",
    "ece",
)
ECE_BINS = 10


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den > 0 else None


def binary_metrics(
    y_true: Sequence[float] | np.ndarray,
    y_prob: Sequence[float] | np.ndarray,
    threshold: float,
) -> dict[str, float | int | list | None]:
    """Metrics of one binary output at ``threshold`` (rows with a NaN label are left out).

    Args:
        y_true: 1-D labels, 0/1, NaN where unknown.
        y_prob: 1-D probabilities of the positive class.
        threshold: predict positive when ``prob >= threshold``.

    Returns:
        ``roc_auc``, ``average_precision``, ``sensitivity``, ``specificity``, ``ppv``, ``npv``,
        ``f1``, ``accuracy``, ``brier``, ``ece`` (10 equal-width bins, see
        :mod:`chestxr.evaluation.calibration`), ``confusion_matrix`` ``[[tn, fp], [fn, tp]]``,
        ``n``, ``n_positive``, ``n_negative`` and ``threshold``; None where undefined.

    Raises:
        ValueError: invalid labels/probabilities (see ``_arrays.as_label_prob``) or threshold.
    """
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold!r}")
    labels, probs, _ = as_label_prob(y_true, y_prob)
    pred = (probs >= threshold).astype(np.int64)
    cm = confusion_matrix(labels, pred, labels=[0, 1]) if labels.size else np.zeros((2, 2), int)
    (tn, fp), (fn, tp) = cm.tolist()
    n_pos, n_neg = tp + fn, tn + fp
    both = n_pos > 0 and n_neg > 0
    out: dict[str, float | int | list | None] = {
        "roc_auc": float(roc_auc_score(labels, probs)) if both else None,
        "average_precision": float(average_precision_score(labels, probs)) if n_pos else None,
        "sensitivity": _ratio(tp, n_pos),
        "specificity": _ratio(tn, n_neg),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": None,
        "accuracy": float(accuracy_score(labels, pred)) if labels.size else None,
        "brier": float(brier_score_loss(labels, probs, labels=[0, 1])) if labels.size else None,
        "ece": expected_calibration_error(labels, probs, ECE_BINS),
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "n": int(labels.size),
        "n_positive": int(n_pos),
        "n_negative": int(n_neg),
        "threshold": float(threshold),
    }
    if labels.size:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            out["f1"] = none_if_nan(f1_score(labels, pred, zero_division=np.nan))
    return out


def weighted_roc_counts(
    y_true: np.ndarray, y_prob: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted positive and negative counts per distinct score, scores ascending.

    Args:
        y_true: (N,) 0/1 labels (no NaN).
        y_prob: (N,) scores.
        weights: (B, N) non-negative weights.

    Returns:
        ``(pos, neg)``, each (B, U) for the U distinct scores in ascending order.
    """
    order = np.argsort(y_prob, kind="stable")
    sorted_prob = y_prob[order]
    starts = np.flatnonzero(np.r_[True, sorted_prob[1:] != sorted_prob[:-1]])
    w = weights[:, order]
    y = y_true[order].astype(np.float64)
    pos = np.add.reduceat(w * y, starts, axis=1)
    neg = np.add.reduceat(w * (1.0 - y), starts, axis=1)
    return pos, neg


def weighted_auc(y_true: np.ndarray, y_prob: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC for each row of ``weights`` (B, N); NaN where a class has zero weight.

    Ties count one half, as in ``roc_auc_score``.
    """
    pos, neg = weighted_roc_counts(y_true, y_prob, weights)
    neg_below = np.cumsum(neg, axis=1) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (neg_below + 0.5 * neg)).sum(axis=1) / (pos.sum(axis=1) * neg.sum(axis=1))


def weighted_binary_metrics(
    y_true: np.ndarray, y_prob: np.ndarray, threshold: float, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """The scalar metrics of :func:`binary_metrics` for each row of ``weights``.

    Args:
        y_true: (N,) 0/1 labels (no NaN: mask first).
        y_prob: (N,) probabilities.
        threshold: predict positive when ``prob >= threshold``.
        weights: (B, N) non-negative weights (bootstrap draw counts).

    Returns:
        ``{metric: (B,) array}`` for the names in :data:`SCALAR_METRICS`; NaN where undefined.
    """
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_prob, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    pred = (p >= threshold).astype(np.float64)
    n_pos, n_neg = w @ y, w @ (1.0 - y)
    tp, fp = w @ (y * pred), w @ ((1.0 - y) * pred)
    fn, tn = n_pos - tp, n_neg - fp
    total = n_pos + n_neg

    pos_u, neg_u = weighted_roc_counts(y, p, w)
    neg_below = np.cumsum(neg_u, axis=1) - neg_u
    # Average precision: thresholds at the distinct scores, descending (scikit-learn's sum).
    tp_desc = np.cumsum(pos_u[:, ::-1], axis=1)
    fp_desc = np.cumsum(neg_u[:, ::-1], axis=1)
    onehot = np.eye(ECE_BINS)[bin_indices(p, ECE_BINS)]
    gap = w @ (onehot * (y - p)[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos_u * (neg_below + 0.5 * neg_u)).sum(axis=1) / (n_pos * n_neg)
        precision = np.where(tp_desc + fp_desc > 0, tp_desc / (tp_desc + fp_desc), 0.0)
        ap = (pos_u[:, ::-1] * precision).sum(axis=1) / n_pos
        return {
            "roc_auc": auc,
            "average_precision": ap,
            "sensitivity": tp / n_pos,
            "specificity": tn / n_neg,
            "ppv": tp / (tp + fp),
            "npv": tn / (tn + fn),
            "f1": 2 * tp / (2 * tp + fp + fn),
            "accuracy": (tp + tn) / total,
            "brier": (w @ (p - y) ** 2) / total,
            "ece": np.abs(gap).sum(axis=1) / total,
        }


@dataclass(frozen=True)
class BinaryMetrics:
    """:func:`binary_metrics` at a fixed threshold, with a vectorised ``batched`` form.

    Pass an instance as ``metric_fn`` to :func:`chestxr.evaluation.bootstrap.cluster_bootstrap`:
    it is called like ``binary_metrics`` and the bootstrap uses ``batched`` for speed.
    """

    threshold: float

    def __call__(self, y_true: np.ndarray, y_prob: np.ndarray) -> dict:
        return binary_metrics(y_true, y_prob, self.threshold)

    def batched(
        self, y_true: np.ndarray, y_prob: np.ndarray, weights: np.ndarray
    ) -> dict[str, np.ndarray]:
        return weighted_binary_metrics(y_true, y_prob, self.threshold, weights)
