"""Input checks shared by the evaluation modules (1-D label/probability pairs, NaN masking)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def as_label_prob(
    y_true: Sequence[float] | np.ndarray, y_prob: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check a 1-D label/probability pair and drop the rows whose label is unknown.

    Args:
        y_true: labels, 0/1 with NaN where the label is unknown.
        y_prob: predicted probabilities of the positive class, in [0, 1], same length.

    Returns:
        ``(labels, probs, keep)``: labels as ``int64`` 0/1 and probabilities as ``float64`` for the
        labelled rows only, and the boolean mask of those rows in the input.

    Raises:
        ValueError: shapes differ or are not 1-D, a label is not 0/1/NaN, a probability is NaN or
            outside [0, 1].
    """
    yt = np.asarray(y_true, dtype=np.float64)
    yp = np.asarray(y_prob, dtype=np.float64)
    if yt.ndim != 1 or yp.shape != yt.shape:
        raise ValueError(
            f"y_true and y_prob must be 1-D arrays of the same length, got shapes "
            f"{yt.shape} and {yp.shape}"
        )
    keep = ~np.isnan(yt)
    labels = yt[keep]
    bad = labels[(labels != 0) & (labels != 1)]
    if bad.size:
        raise ValueError(f"labels must be 0, 1 or NaN, got {bad[:5].tolist()}")
    probs = yp[keep]
    if np.isnan(probs).any():
        raise ValueError(
            f"y_prob holds NaN at {int(np.isnan(probs).sum())} labelled rows; "
            "a prediction is needed for every labelled scan"
        )
    out = probs[(probs < 0) | (probs > 1)]
    if out.size:
        raise ValueError(f"probabilities must lie in [0, 1], got {out[:5].tolist()}")
    return labels.astype(np.int64), probs, keep


def as_2d(array: Sequence | np.ndarray, name: str) -> np.ndarray:
    """Return ``array`` as float64 of shape (N, K); a 1-D input becomes (N, 1).

    Raises:
        ValueError: the array has more than two dimensions.
    """
    arr = np.asarray(array, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (N, K) or (N,), got {arr.shape}")
    return arr


def none_if_nan(value: float | None) -> float | None:
    """Return ``None`` for a NaN/inf or ``None`` input, else the value as a Python float."""
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None
