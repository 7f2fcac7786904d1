"""Calibration: reliability curves, expected calibration error and temperature scaling.

Binning (shared by :func:`reliability_curve` and :func:`expected_calibration_error`) follows
scikit-learn's ``calibration_curve(strategy="uniform")``: ``n_bins`` equal-width bins over [0, 1]
with edges ``linspace(0, 1, n_bins + 1)``; bin 0 is ``[0, e1]``, bin i > 0 is ``(e_i, e_i+1]``.

ECE = sum over bins b of ``(n_b / N) * |mean(y in b) - mean(p in b)|``, i.e. the count-weighted
mean absolute gap between observed frequency and mean predicted probability (empty bins add 0).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit
from scipy.special import logit as scipy_logit

from chestxr.evaluation._arrays import as_label_prob

log = logging.getLogger(__name__)

_LOG_T_RANGE = (math.log(1e-3), math.log(1e3))


def bin_indices(y_prob: np.ndarray, n_bins: int = 10) -> np.ndarray:
    """Return the calibration bin (0 .. n_bins - 1) of each probability (module docstring).

    Raises:
        ValueError: ``n_bins`` < 1.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], np.asarray(y_prob, dtype=np.float64), side="left")


def expected_calibration_error(
    y_true: Sequence[float] | np.ndarray, y_prob: Sequence[float] | np.ndarray, n_bins: int = 10
) -> float | None:
    """Expected calibration error with ``n_bins`` equal-width bins (module docstring).

    Args:
        y_true: 1-D labels, 0/1, NaN masked.
        y_prob: 1-D probabilities.
        n_bins: number of equal-width bins over [0, 1].

    Returns:
        The ECE in [0, 1], or None when no row is labelled.
    """
    labels, probs, _ = as_label_prob(y_true, y_prob)
    if labels.size == 0:
        return None
    bins = bin_indices(probs, n_bins)
    gap = np.bincount(bins, weights=labels - probs, minlength=n_bins)
    return float(np.abs(gap).sum() / labels.size)


def reliability_curve(
    y_true: Sequence[float] | np.ndarray, y_prob: Sequence[float] | np.ndarray, n_bins: int = 10
) -> dict[str, list]:
    """Reliability diagram data with equal-width bins.

    Args:
        y_true: 1-D labels, 0/1, NaN masked.
        y_prob: 1-D probabilities.
        n_bins: number of bins.

    Returns:
        ``{"bin_edges", "bin_centers", "counts", "mean_predicted", "observed_frequency"}`` as
        lists (length ``n_bins``, edges ``n_bins + 1``); empty bins hold None in the last two.
    """
    labels, probs, _ = as_label_prob(y_true, y_prob)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = bin_indices(probs, n_bins)
    counts = np.bincount(bins, minlength=n_bins)
    sum_p = np.bincount(bins, weights=probs, minlength=n_bins)
    sum_y = np.bincount(bins, weights=labels.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p, freq = sum_p / counts, sum_y / counts
    return {
        "bin_edges": edges.tolist(),
        "bin_centers": ((edges[:-1] + edges[1:]) / 2).tolist(),
        "counts": counts.astype(int).tolist(),
        "mean_predicted": [float(v) if c else None for v, c in zip(mean_p, counts, strict=True)],
        "observed_frequency": [float(v) if c else None for v, c in zip(freq, counts, strict=True)],
    }


def _nll(log_t: float, logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy of ``sigmoid(logits / exp(log_t))`` (numerically stable)."""
    signed = np.where(labels == 1, logits, -logits) / math.exp(log_t)
    return float(np.logaddexp(0.0, -signed).mean())


def fit_temperature(
    logits: Sequence[float] | np.ndarray, y_true: Sequence[float] | np.ndarray
) -> float:
    """Fit the temperature T > 0 minimising the NLL of ``sigmoid(logits / T)``.

    One T is shared by all outputs when ``logits`` is (N, K). The NLL is convex in 1/T, hence
    unimodal in log T: scipy's bounded scalar minimiser (Brent's method, golden-section steps)
    over log T in [log 1e-3, log 1e3] finds it.

    Args:
        logits: (N,) or (N, K) pre-sigmoid scores (fit on validation data, not test data).
        y_true: labels of the same shape, 0/1 with NaN masked.

    Returns:
        The temperature; divide logits by it before the sigmoid (see :func:`apply_temperature`).

    Raises:
        ValueError: shapes differ, non-finite logits at labelled rows, or no labelled row.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.float64)
    if z.shape != y.shape:
        raise ValueError(f"logits {z.shape} and y_true {y.shape} must have the same shape")
    keep = ~np.isnan(y)
    z, y = z[keep], y[keep]
    if z.size == 0:
        raise ValueError("fit_temperature needs at least one labelled row")
    if not np.isfinite(z).all():
        raise ValueError("logits must be finite at labelled rows")
    bad = y[(y != 0) & (y != 1)]
    if bad.size:
        raise ValueError(f"labels must be 0, 1 or NaN, got {bad[:5].tolist()}")

    lo, hi = _LOG_T_RANGE
    res = minimize_scalar(
        _nll, bounds=(lo, hi), args=(z, y), method="bounded", options={"xatol": 1e-8}
    )
    log_t = float(res.x)
    if min(abs(log_t - lo), abs(log_t - hi)) < 1e-3:
        log.warning("temperature hit the search bound (T = %.3g): logits look uninformative", log_t)
    return math.exp(log_t)


def apply_temperature(logits: Sequence[float] | np.ndarray, temperature: float) -> np.ndarray:
    """Return ``sigmoid(logits / temperature)``.

    Raises:
        ValueError: ``temperature`` is not a positive finite number.
    """
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    return expit(np.asarray(logits, dtype=np.float64) / temperature)


def temperature_scale_probabilities(
    logits: np.ndarray, thresholds: np.ndarray, temperature: float
) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated probabilities ``sigmoid(logits / T)`` ``(N, K)`` and decision thresholds
    ``(K,)`` on the same scale, with every decision kept.

    A decision is ``expit(logits) >= threshold`` with the probabilities computed as evaluation
    computes them (in the logits' dtype, float32 as predicted). Confident logits round to one
    float32 probability and a threshold chosen on validation is such a value, so mapping the
    threshold's own logit would move the scans tied with it below it. Each threshold is mapped
    instead from the lowest logit (in the logits' dtype) whose probability reaches it: a scan is
    at or above the calibrated threshold exactly when it was at or above the original. The
    probabilities themselves come from the logits (float64), at full precision.

    Raises:
        ValueError: shapes differ, ``temperature`` is not a positive finite number, or a decision
            would still change: at a small T, ``sigmoid(logit / T)`` is exactly 1.0 in float64
            for every logit above ~37 T, so scans just below a high threshold would reach it.
    """
    z = np.asarray(logits)
    if z.ndim != 2 or np.shape(thresholds) != (z.shape[1],):
        raise ValueError(
            f"logits (N, K) and thresholds (K,), got {z.shape} and {np.shape(thresholds)}"
        )
    thresholds = np.asarray(thresholds, dtype=np.float64)
    prob = expit(z).astype(np.float64)
    lowest = np.array([_lowest_logit_reaching(t, z.dtype) for t in thresholds])
    scaled = apply_temperature(z, temperature)
    scaled_thresholds = apply_temperature(lowest, temperature)
    changed = (prob >= thresholds) != (scaled >= scaled_thresholds)
    if changed.any():
        row, col = (int(i[0]) for i in np.nonzero(changed))
        raise ValueError(
            f"temperature scaling (T = {temperature:.4g}) would change {int(changed.sum())} "
            f"decision(s), first at row {row}, output {col} (probability {prob[row, col]:.9g}, "
            f"threshold {thresholds[col]:.9g}): at this T the calibrated probabilities near the "
            "threshold round to 1.0; evaluate with evaluation.temperature_scaling=false"
        )
    return scaled, scaled_thresholds


def _lowest_logit_reaching(threshold: float, dtype: np.dtype) -> float:
    """The lowest ``z`` of ``dtype`` with ``expit(z) >= threshold`` (``expit`` in that dtype, as
    :func:`~chestxr.inference.predict_dataset` computes probabilities); -inf when every logit
    reaches it, +inf when none does. Bisection over the values of ``dtype``."""
    dtype = np.dtype(dtype) if np.issubdtype(dtype, np.floating) else np.dtype(np.float64)

    def reaches(v: float) -> bool:
        return float(expit(np.asarray(v, dtype=dtype))) >= threshold

    lo, hi = dtype.type(-800.0), dtype.type(800.0)  # expit is 0 and 1 beyond, in any float dtype
    if reaches(lo):
        return -math.inf
    if not reaches(hi):
        return math.inf
    while (step := np.nextafter(lo, hi)) < hi:  # expit(lo) < threshold <= expit(hi)
        mid = dtype.type((float(lo) + float(hi)) / 2)
        if mid <= lo or mid >= hi:
            mid = step
        lo, hi = (lo, mid) if reaches(mid) else (mid, hi)
    return float(hi)


def logit(y_prob: Sequence[float] | np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Inverse sigmoid of probabilities clipped to ``[eps, 1 - eps]`` (for saved predictions)."""
    return scipy_logit(np.clip(np.asarray(y_prob, dtype=np.float64), eps, 1.0 - eps))
