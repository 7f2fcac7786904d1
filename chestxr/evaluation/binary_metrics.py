"""Metrics of one binary output at an operating point, and THE registry of those metrics.

:data:`METRICS` is the one place a metric is defined: its name, its label, its point function
(scikit-learn where it has one), its bootstrap function (vectorised over resample weights) and
why it can be undefined. ``metrics.json``, ``summary.html``, the bootstrap intervals, the macro
averages and the schema text (:func:`schema_text`) are all derived from it: adding a metric is one
:class:`Metric` entry below.

:func:`binary_metrics` computes every registered metric of one output;
:func:`weighted_binary_metrics` the same numbers for a batch of integer weight vectors at once
(weight = how many times a scan was drawn by a bootstrap resample), so that 1000 resamples cost
a few matrix products instead of 1000 scikit-learn calls. With all weights 1 both agree to
floating-point precision (tested).

A scan is predicted positive when ``prob >= threshold``. Undefined values (sensitivity without
positives, PPV without predicted positives, AUC with one class, ...) are None, never NaN, and
``binary_metrics`` says why in its ``undefined`` entry.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

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

ECE_BINS = 10


@dataclass(frozen=True)
class PointCounts:
    """One output's labelled rows at a threshold: what a point function reads."""

    labels: np.ndarray
    probs: np.ndarray
    pred: np.ndarray
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def n_pos(self) -> int:
        return self.tp + self.fn

    @property
    def n_neg(self) -> int:
        return self.tn + self.fp


class WeightedCounts:
    """One output's labelled rows under B weight vectors: what a bootstrap function reads.

    Every count is a (B,) array; ROC counts are computed once, when a metric first needs them.
    """

    def __init__(self, y: np.ndarray, p: np.ndarray, threshold: float, w: np.ndarray) -> None:
        self.y, self.p, self.w = y, p, w
        pred = (p >= threshold).astype(np.float64)
        self.n_pos, self.n_neg = w @ y, w @ (1.0 - y)
        self.tp, self.fp = w @ (y * pred), w @ ((1.0 - y) * pred)
        self.fn, self.tn = self.n_pos - self.tp, self.n_neg - self.fp
        self.total = self.n_pos + self.n_neg

    @cached_property
    def roc(self) -> tuple[np.ndarray, np.ndarray]:
        """Weighted (pos, neg) counts per distinct score, ascending (see weighted_roc_counts)."""
        return weighted_roc_counts(self.y, self.p, self.w)


@dataclass(frozen=True)
class Metric:
    """One scalar metric of a binary output.

    Attributes:
        name: key in ``metrics.json``.
        label: row label in ``summary.html``.
        point: ``PointCounts -> float | None`` (None where undefined).
        batched: ``WeightedCounts -> (B,) array`` (NaN where undefined), for the bootstrap.
        undefined: why the value can be undefined (written beside a null).
        short: column heading in the overview tables (default: ``label``).
        overview: shown in the overview table of ``summary.html``.
        subgroup: shown in the subgroup tables.
        macro: averaged over outputs (with a joint-bootstrap interval) when there are several.
    """

    name: str
    label: str
    point: Callable[[PointCounts], float | None]
    batched: Callable[[WeightedCounts], np.ndarray]
    undefined: str
    short: str = ""
    overview: bool = False
    subgroup: bool = False
    macro: bool = False


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den > 0 else None


def _auc(c: PointCounts) -> float | None:
    return float(roc_auc_score(c.labels, c.probs)) if c.n_pos and c.n_neg else None


def _auc_batched(c: WeightedCounts) -> np.ndarray:
    pos, neg = c.roc
    neg_below = np.cumsum(neg, axis=1) - neg
    return (pos * (neg_below + 0.5 * neg)).sum(axis=1) / (c.n_pos * c.n_neg)


def _ap_batched(c: WeightedCounts) -> np.ndarray:
    # thresholds at the distinct scores, descending (scikit-learn's sum)
    pos, neg = c.roc
    tp_desc = np.cumsum(pos[:, ::-1], axis=1)
    fp_desc = np.cumsum(neg[:, ::-1], axis=1)
    precision = np.where(tp_desc + fp_desc > 0, tp_desc / (tp_desc + fp_desc), 0.0)
    return (pos[:, ::-1] * precision).sum(axis=1) / c.n_pos


def _f1(c: PointCounts) -> float | None:
    if not c.labels.size:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return none_if_nan(f1_score(c.labels, c.pred, zero_division=np.nan))


def _ece_batched(c: WeightedCounts) -> np.ndarray:
    onehot = np.eye(ECE_BINS)[bin_indices(c.p, ECE_BINS)]
    gap = c.w @ (onehot * (c.y - c.p)[:, None])
    return np.abs(gap).sum(axis=1) / c.total


_NO_ROW = "no labelled scan"

#: The registry: every scalar metric, in the order of ``metrics.json`` and ``summary.html``.
METRICS: tuple[Metric, ...] = (
    Metric(
        "roc_auc", "ROC AUC", _auc, _auc_batched,
        "needs both a positive and a negative case",
        overview=True, subgroup=True, macro=True,
    ),
    Metric(
        "average_precision", "Average precision",
        lambda c: float(average_precision_score(c.labels, c.probs)) if c.n_pos else None,
        _ap_batched, "needs a positive case", short="AP", overview=True, macro=True,
    ),
    Metric(
        "sensitivity", "Sensitivity", lambda c: _ratio(c.tp, c.n_pos),
        lambda c: c.tp / c.n_pos, "no positive case", overview=True, subgroup=True,
    ),
    Metric(
        "specificity", "Specificity", lambda c: _ratio(c.tn, c.n_neg),
        lambda c: c.tn / c.n_neg, "no negative case", overview=True, subgroup=True,
    ),
    Metric(
        "ppv", "PPV", lambda c: _ratio(c.tp, c.tp + c.fp),
        lambda c: c.tp / (c.tp + c.fp), "no scan predicted positive",
    ),
    Metric(
        "npv", "NPV", lambda c: _ratio(c.tn, c.tn + c.fn),
        lambda c: c.tn / (c.tn + c.fn), "no scan predicted negative",
    ),
    Metric(
        "f1", "F1", _f1, lambda c: 2 * c.tp / (2 * c.tp + c.fp + c.fn),
        "no positive case and no scan predicted positive",
    ),
    Metric(
        "accuracy", "Accuracy",
        lambda c: float(accuracy_score(c.labels, c.pred)) if c.labels.size else None,
        lambda c: (c.tp + c.tn) / c.total, _NO_ROW,
    ),
    Metric(
        "brier", "Brier score",
        lambda c: float(brier_score_loss(c.labels, c.probs, labels=[0, 1]))
        if c.labels.size
        else None,
        lambda c: (c.w @ (c.p - c.y) ** 2) / c.total, _NO_ROW,
    ),
    Metric(
        "ece", f"ECE ({ECE_BINS} bins)",
        lambda c: expected_calibration_error(c.labels, c.probs, ECE_BINS),
        _ece_batched, _NO_ROW,
    ),
)  # fmt: skip
METRIC_BY_NAME = {m.name: m for m in METRICS}
#: Scalar metrics that have confidence intervals (the bootstrap resamples them).
SCALAR_METRICS = tuple(m.name for m in METRICS)
MACRO_METRICS = tuple(m.name for m in METRICS if m.macro)


def binary_metrics(
    y_true: Sequence[float] | np.ndarray,
    y_prob: Sequence[float] | np.ndarray,
    threshold: float,
) -> dict:
    """Every metric of :data:`METRICS` for one binary output at ``threshold``.

    Rows with a NaN label are left out.

    Args:
        y_true: 1-D labels, 0/1, NaN where unknown.
        y_prob: 1-D probabilities of the positive class.
        threshold: predict positive when ``prob >= threshold``.

    Returns:
        One entry per registered metric (None where undefined), ``confusion_matrix``
        ``[[tn, fp], [fn, tp]]``, ``n``, ``n_positive``, ``n_negative``, ``threshold`` and
        ``undefined``: ``{metric: reason}`` for each None.

    Raises:
        ValueError: invalid labels/probabilities (see ``_arrays.as_label_prob``) or threshold.
    """
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold!r}")
    labels, probs, _ = as_label_prob(y_true, y_prob)
    pred = (probs >= threshold).astype(np.int64)
    cm = confusion_matrix(labels, pred, labels=[0, 1]) if labels.size else np.zeros((2, 2), int)
    (tn, fp), (fn, tp) = cm.tolist()
    counts = PointCounts(labels, probs, pred, tp=tp, fp=fp, tn=tn, fn=fn)
    out: dict = {m.name: m.point(counts) for m in METRICS}
    undefined = {m.name: m.undefined for m in METRICS if out[m.name] is None}
    out.update(
        confusion_matrix=[[tn, fp], [fn, tp]],
        n=int(labels.size),
        n_positive=int(counts.n_pos),
        n_negative=int(counts.n_neg),
        threshold=float(threshold),
        undefined=undefined,
    )
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
    y = np.asarray(y_true, dtype=np.float64)
    counts = WeightedCounts(y, np.asarray(y_prob, dtype=np.float64), 0.5, weights)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _auc_batched(counts)


def weighted_binary_metrics(
    y_true: np.ndarray, y_prob: np.ndarray, threshold: float, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """The metrics of :data:`METRICS` for each row of ``weights``.

    Args:
        y_true: (N,) 0/1 labels (no NaN: mask first).
        y_prob: (N,) probabilities.
        threshold: predict positive when ``prob >= threshold``.
        weights: (B, N) non-negative weights (bootstrap draw counts).

    Returns:
        ``{metric: (B,) array}`` for the names in :data:`SCALAR_METRICS`; NaN where undefined.
    """
    counts = WeightedCounts(
        np.asarray(y_true, dtype=np.float64),
        np.asarray(y_prob, dtype=np.float64),
        threshold,
        np.asarray(weights, dtype=np.float64),
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        return {m.name: np.asarray(m.batched(counts), dtype=np.float64) for m in METRICS}


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


def schema_text() -> str:
    """The registered metrics as the ``metrics`` part of the ``metrics.json`` schema."""
    lines = [f"  {m.name:<18} {m.label}; null when {m.undefined}" for m in METRICS]
    return "\n".join(lines)
