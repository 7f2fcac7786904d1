"""Patient-level (cluster) bootstrap confidence intervals and paired AUC comparisons.

Scans of one patient are correlated, so resampling scans understates the uncertainty. Here a
resample draws PATIENTS with replacement (each drawn patient brings all of its scans, as many
times as it was drawn); intervals are percentile intervals of the resampled metric. A resample
is held as a weight vector (how often each scan was drawn), so a metric with a vectorised
``batched(y_true, y_prob, weights)`` method (e.g. ``binary_metrics.BinaryMetrics``) evaluates
hundreds of resamples per matrix product; any other ``metric_fn(y_true, y_prob)`` is called once per
resample on the expanded arrays. Both paths see the same resamples.

Kept by hand: ``scipy.stats.bootstrap`` resamples observations, not patients, and calls the
metric once per resample; no library does the cluster bootstrap with weight vectors.

Randomness comes only from ``numpy.random.default_rng(seed)`` created per call.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
from scipy.stats import norm, rankdata

from chestxr.evaluation._arrays import as_label_prob, none_if_nan
from chestxr.evaluation.binary_metrics import weighted_auc, weighted_roc_counts

log = logging.getLogger(__name__)

MetricFn = Callable[[np.ndarray, np.ndarray], "Mapping[str, float | None] | float"]
_MAX_CELLS = 1 << 22  # weights per chunk (B_chunk * N): 32 MiB of float64


def cluster_codes(groups: Sequence | np.ndarray | None, n: int) -> tuple[np.ndarray, int]:
    """Map cluster ids to 0..C-1; ``None`` makes every scan its own cluster.

    Raises:
        ValueError: ``groups`` does not have length ``n``.
    """
    if groups is None or n == 0:
        return np.arange(n), n
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups must have shape ({n},), got {g.shape}")
    uniques, codes = np.unique(g.astype(str), return_inverse=True)
    return codes.ravel(), int(uniques.size)


def resample_weights(
    codes: np.ndarray, n_clusters: int, n_resamples: int, seed: int, max_cells: int = _MAX_CELLS
) -> Iterator[np.ndarray]:
    """Yield bootstrap draw counts per scan, in chunks of shape (b, N) summing to B rows.

    Each row draws ``n_clusters`` clusters with replacement; a scan's weight is the number of
    times its cluster was drawn. The stream depends only on the arguments.
    """
    rng = np.random.default_rng(seed)
    n = codes.size
    chunk = max(1, min(n_resamples, max_cells // max(n, n_clusters, 1)))
    done = 0
    while done < n_resamples:
        b = min(chunk, n_resamples - done)
        draws = rng.integers(0, n_clusters, size=(b, n_clusters))
        offsets = (np.arange(b) * n_clusters)[:, None]
        counts = np.bincount((draws + offsets).ravel(), minlength=b * n_clusters)
        yield counts.reshape(b, n_clusters)[:, codes].astype(np.float64)
        done += b


def _as_dict(value: Mapping[str, float | None] | float) -> dict[str, float]:
    if isinstance(value, Mapping):
        return {
            k: (np.nan if v is None else float(v))
            for k, v in value.items()
            if v is None or isinstance(v, (int, float, np.number))
        }
    return {"value": np.nan if value is None else float(value)}


def bootstrap_distribution(
    metric_fn: MetricFn,
    y_true: Sequence[float] | np.ndarray,
    y_prob: Sequence[float] | np.ndarray,
    groups: Sequence | np.ndarray | None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Resampled values of every scalar metric of ``metric_fn`` (NaN where undefined).

    Rows with a NaN label are dropped first; the clusters of the remaining rows are resampled.

    Args:
        metric_fn: ``(y_true, y_prob) -> {name: value}`` (or a float, named ``value``); used
            through its ``batched(y_true, y_prob, weights)`` method when it has one.
        y_true: 1-D labels, 0/1 with NaN masked.
        y_prob: 1-D probabilities.
        groups: cluster (patient) id per scan, or None for a per-scan bootstrap.
        n_resamples: number of resamples B.
        seed: seed of the numpy Generator.

    Returns:
        ``{name: (B,) array}``. Count-like entries (``n``, ``threshold``, lists) are skipped.

    Raises:
        ValueError: ``n_resamples`` < 1, or invalid inputs.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    labels, probs, keep = as_label_prob(y_true, y_prob)
    codes, n_clusters = cluster_codes(
        None if groups is None else np.asarray(groups)[keep], labels.size
    )
    if labels.size == 0:
        raise ValueError("cannot bootstrap: no labelled row")
    batched = getattr(metric_fn, "batched", None)
    parts: dict[str, list[np.ndarray]] = {}
    skip = {"n", "n_positive", "n_negative", "threshold"}
    index = np.arange(labels.size)
    for weights in resample_weights(codes, n_clusters, n_resamples, seed):
        if callable(batched):
            result = batched(labels, probs, weights)
            values = {k: np.asarray(v, dtype=np.float64) for k, v in result.items()}
        else:
            rows = [
                _as_dict(metric_fn(labels[idx], probs[idx]))
                for idx in (np.repeat(index, w.astype(np.int64)) for w in weights)
            ]
            values = {k: np.array([r.get(k, np.nan) for r in rows]) for k in rows[0]}
        for k, v in values.items():
            if k not in skip:
                parts.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in parts.items()}


def percentile_interval(
    values: np.ndarray, confidence: float = 0.95, name: str = "value"
) -> tuple[float | None, float | None]:
    """Percentile interval of resampled values, ignoring NaN (undefined) resamples.

    Returns ``(None, None)`` when every resample is undefined; logs a warning when more than 5 %
    are (the interval then describes the resamples where the metric exists).

    Raises:
        ValueError: ``confidence`` not in (0, 1).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None, None
    if finite.size < 0.95 * values.size:
        log.warning(
            "%s undefined in %d of %d bootstrap resamples",
            name,
            values.size - finite.size,
            values.size,
        )
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(low), float(high)


def cluster_bootstrap(
    metric_fn: MetricFn,
    y_true: Sequence[float] | np.ndarray,
    y_prob: Sequence[float] | np.ndarray,
    groups: Sequence | np.ndarray | None,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, tuple[float | None, float | None]]:
    """Percentile confidence intervals from a patient (cluster) bootstrap.

    Args:
        metric_fn: see :func:`bootstrap_distribution`; pass
            ``chestxr.evaluation.binary_metrics.BinaryMetrics(threshold)`` for the standard metrics.
        y_true: 1-D labels, 0/1 with NaN masked.
        y_prob: 1-D probabilities.
        groups: patient id per scan (the resampling unit), or None for a per-scan bootstrap.
        n_resamples: number of resamples.
        seed: seed of the numpy Generator.
        confidence: interval coverage, e.g. 0.95.

    Returns:
        ``{metric: (low, high)}``, None bounds where the metric is never defined.
    """
    dist = bootstrap_distribution(metric_fn, y_true, y_prob, groups, n_resamples, seed)
    return {k: percentile_interval(v, confidence, k) for k, v in dist.items()}


def roc_band(
    y_true: Sequence[float] | np.ndarray,
    y_prob: Sequence[float] | np.ndarray,
    groups: Sequence | np.ndarray | None,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    n_points: int = 101,
) -> dict[str, np.ndarray]:
    """Pointwise bootstrap band of the ROC curve (TPR at fixed FPR, vertical averaging).

    Returns:
        ``{"fpr": grid, "low": tpr_low, "high": tpr_high}``, each of length ``n_points``; pass it
        as ``band={name: ...}`` to :func:`chestxr.evaluation.plots.plot_roc`.
    """
    labels, probs, keep = as_label_prob(y_true, y_prob)
    codes, n_clusters = cluster_codes(
        None if groups is None else np.asarray(groups)[keep], labels.size
    )
    grid = np.linspace(0.0, 1.0, n_points)
    curves = []
    for weights in resample_weights(codes, n_clusters, n_resamples, seed):
        pos, neg = weighted_roc_counts(labels, probs, weights)
        tps = np.cumsum(pos[:, ::-1], axis=1)
        fps = np.cumsum(neg[:, ::-1], axis=1)
        for tp, fp in zip(tps, fps, strict=True):
            if tp[-1] > 0 and fp[-1] > 0:
                curves.append(np.interp(grid, np.r_[0.0, fp / fp[-1]], np.r_[0.0, tp / tp[-1]]))
    if not curves:
        raise ValueError("no bootstrap resample holds both classes: no ROC band")
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(np.stack(curves), [alpha, 1.0 - alpha], axis=0)
    return {"fpr": grid, "low": low, "high": high}


def delong_test(
    y_true: Sequence[float] | np.ndarray,
    prob_a: Sequence[float] | np.ndarray,
    prob_b: Sequence[float] | np.ndarray,
) -> dict[str, float | str | None]:
    """DeLong test of two correlated ROC AUCs, fast algorithm of Sun & Xu (2014).

    Kept by hand: no well-kept Python library offers the paired DeLong test (scipy and
    scikit-learn do not); ranks and the normal tail come from scipy. Assumes independent scans (it
    ignores patient clustering; use the paired patient bootstrap of :func:`paired_auc_difference`
    when patients have several scans).

    Args:
        y_true: 1-D labels, 0/1 with NaN masked.
        prob_a: scores of model A.
        prob_b: scores of model B.

    Returns:
        ``{"auc_a", "auc_b", "delta" (a - b), "se", "z", "p_value", "reason"}``: z = 0 and p = 1
        when the two score vectors rank every pair identically; z None when only the variance is
        0. With a single positive or a single negative the variance is undefined: ``se``, ``z``
        and ``p_value`` are None and ``reason`` says why (``reason`` is None otherwise).

    Raises:
        ValueError: a class is absent.
    """
    labels, pa, _ = as_label_prob(y_true, prob_a)
    _, pb, _ = as_label_prob(y_true, prob_b)
    m, n = int(labels.sum()), int(labels.size - labels.sum())
    if m == 0 or n == 0:
        raise ValueError(f"DeLong needs both classes, got {m} positives and {n} negatives")
    pos, neg = labels == 1, labels == 0
    aucs, v01, v10 = [], [], []
    for scores in (pa, pb):
        x, y = scores[pos], scores[neg]
        tx, ty, tz = rankdata(x), rankdata(y), rankdata(np.r_[x, y])
        aucs.append((tz[:m].sum() - m * (m + 1) / 2.0) / (m * n))
        v01.append((tz[:m] - tx) / n)
        v10.append(1.0 - (tz[m:] - ty) / m)
    delta = float(aucs[0] - aucs[1])
    result: dict[str, float | str | None] = {
        "auc_a": float(aucs[0]),
        "auc_b": float(aucs[1]),
        "delta": delta,
        "se": None,
        "z": None,
        "p_value": None,
        "reason": None,
    }
    if m < 2 or n < 2:
        # the variance of the placement values over one case is undefined (not zero)
        result["reason"] = (
            f"DeLong's variance needs at least 2 positives and 2 negatives, got {m} positive(s) "
            f"and {n} negative(s); no p-value"
        )
        return result
    cov = np.cov(np.stack(v01)) / m + np.cov(np.stack(v10)) / n
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    if var <= 1e-15:
        result["se"] = 0.0
        if abs(delta) < 1e-12:
            result["z"], result["p_value"] = 0.0, 1.0
        else:
            result["p_value"] = 0.0
    else:
        se = math.sqrt(var)
        result["se"], result["z"] = se, delta / se
        result["p_value"] = float(2.0 * norm.sf(abs(delta / se)))
    return result


def paired_auc_difference(
    y_true: Sequence[float] | np.ndarray,
    prob_a: Sequence[float] | np.ndarray,
    prob_b: Sequence[float] | np.ndarray,
    groups: Sequence | np.ndarray | None,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """Compare the ROC AUC of two models on the same scans (model A minus model B).

    The paired bootstrap draws patients once per resample and scores both models on the same
    draw. Two-sided p-value: ``min(1, 2 * min(#(d <= 0) + 1, #(d >= 0) + 1) / (B + 1))`` over
    the B resampled differences d (how far 0 lies in the tail of the bootstrap distribution).

    Args:
        y_true: 1-D labels, 0/1 with NaN masked.
        prob_a: scores of model A, same scans.
        prob_b: scores of model B.
        groups: patient id per scan, or None for a per-scan bootstrap.
        n_resamples: number of resamples.
        seed: seed of the numpy Generator.
        confidence: interval coverage.

    Returns:
        ``{"auc_a", "auc_b", "delta", "ci": [low, high], "confidence", "p_value", "n",
        "n_positive", "n_patients", "n_resamples", "seed", "unit", "delong": {...}}``.

    Raises:
        ValueError: shapes differ, or a class is absent.
    """
    labels, pa, keep = as_label_prob(y_true, prob_a)
    _, pb, _ = as_label_prob(y_true, prob_b)
    delong = delong_test(labels, pa, pb)
    codes, n_clusters = cluster_codes(
        None if groups is None else np.asarray(groups)[keep], labels.size
    )
    diffs = []
    for weights in resample_weights(codes, n_clusters, n_resamples, seed):
        diffs.append(weighted_auc(labels, pa, weights) - weighted_auc(labels, pb, weights))
    d = np.concatenate(diffs)
    low, high = percentile_interval(d, confidence, "delta AUC")
    finite = d[np.isfinite(d)]
    b = finite.size
    p = min(1.0, 2.0 * min((finite <= 0).sum() + 1, (finite >= 0).sum() + 1) / (b + 1))
    return {
        "auc_a": delong["auc_a"],
        "auc_b": delong["auc_b"],
        "delta": delong["delta"],
        "ci": [none_if_nan(low), none_if_nan(high)],
        "confidence": confidence,
        "p_value": float(p),
        "n": int(labels.size),
        "n_positive": int(labels.sum()),
        "n_patients": int(n_clusters),
        "n_resamples": int(n_resamples),
        "seed": int(seed),
        "unit": "scan" if groups is None else "patient",
        "delong": delong,
    }
