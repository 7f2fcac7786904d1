"""Operating points: pick the decision threshold of a binary output from its ROC curve.

A scan is predicted positive when ``prob >= threshold`` (scikit-learn's ``roc_curve``
convention), everywhere in :mod:`chestxr.evaluation`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_curve

from chestxr.evaluation._arrays import as_2d, as_label_prob

log = logging.getLogger(__name__)

RULES = ("youden", "sensitivity", "specificity", "fixed")


def check_rule(rule: str, target: float | None = None) -> None:
    """Check an operating-point rule and its target without any data (see :func:`choose_threshold`).

    Raises:
        ValueError: unknown rule, or a missing, non-numeric or out-of-range target.
    """
    if rule not in RULES:
        raise ValueError(f"unknown threshold rule {rule!r}; expected one of {RULES}")
    if rule == "youden":
        return
    try:
        value = None if target is None or isinstance(target, bool) else float(target)
    except (TypeError, ValueError):
        value = None
    if rule == "fixed" and (value is None or not 0.0 <= value <= 1.0):
        raise ValueError(f"rule 'fixed' needs a target threshold in [0, 1], got {target!r}")
    if rule in ("sensitivity", "specificity") and (value is None or not 0 < value <= 1):
        raise ValueError(f"rule {rule!r} needs a target in (0, 1], got {target!r}")


def choose_threshold(
    y_true: Sequence[float] | np.ndarray,
    y_prob: Sequence[float] | np.ndarray,
    rule: str = "youden",
    target: float | None = None,
) -> float:
    """Choose a decision threshold for one binary output.

    Rules:
        ``youden``: maximises Youden's J = sensitivity + specificity - 1 over the ROC curve's
        thresholds (ties: the highest threshold).
        ``sensitivity``: the highest threshold whose sensitivity is >= ``target``.
        ``specificity``: the lowest threshold whose specificity is >= ``target``; when only
        "predict nothing positive" reaches it, the next float32 above the largest score.
        ``fixed``: returns ``target`` unchanged (no data needed).

    Args:
        y_true: 1-D labels, 0/1, NaN where unknown (masked).
        y_prob: 1-D probabilities of the positive class.
        rule: one of ``youden``, ``sensitivity``, ``specificity``, ``fixed``.
        target: the sensitivity/specificity to reach, in (0, 1], or the fixed threshold.

    Returns:
        The threshold, a finite float.

    Raises:
        ValueError: unknown rule, missing or out-of-range target, or a class absent from the
            labelled rows.
    """
    check_rule(rule, target)
    if rule == "fixed":
        return float(target)

    labels, probs, _ = as_label_prob(y_true, y_prob)
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.size:
        missing = "positive" if n_pos == 0 else "negative"
        raise ValueError(
            f"cannot choose a threshold by rule {rule!r}: no {missing} case among the "
            f"{labels.size} labelled scans"
        )
    fpr, tpr, thresholds = roc_curve(labels, probs, drop_intermediate=False)
    # thresholds[0] is +inf (predict nothing positive); the others are the distinct scores.
    fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]
    if rule == "youden":
        idx = int(np.argmax(tpr - fpr))
    elif rule == "sensitivity":
        idx = int(np.flatnonzero(tpr >= float(target) - 1e-12)[0])
    else:
        ok = np.flatnonzero(1.0 - fpr >= float(target) - 1e-12)
        if ok.size == 0:
            # the next float32 (the model stores thresholds so): above the top score either way
            above = float(np.nextafter(np.float32(probs.max()), np.float32(np.inf)))
            log.warning(
                "no score threshold reaches specificity %.3f; using %.6g (nothing positive)",
                float(target),
                above,
            )
            return above
        idx = int(ok[-1])
    return float(thresholds[idx])


def choose_thresholds(
    y_true: Sequence | np.ndarray,
    y_prob: Sequence | np.ndarray,
    names: Sequence[str],
    rule: str = "youden",
    target: float | None = None,
) -> dict[str, float]:
    """Apply :func:`choose_threshold` to each of K outputs (typically on validation predictions).

    Args:
        y_true: (N, K) labels with NaN where unknown, or (N,) for K = 1.
        y_prob: (N, K) probabilities, or (N,).
        names: the K output names.
        rule: see :func:`choose_threshold`.
        target: see :func:`choose_threshold`.

    Returns:
        ``{name: threshold}``.

    Raises:
        ValueError: shapes disagree with ``names``, or as :func:`choose_threshold`.
    """
    yt, yp = as_2d(y_true, "y_true"), as_2d(y_prob, "y_prob")
    if yt.shape != yp.shape or yt.shape[1] != len(names):
        raise ValueError(
            f"y_true {yt.shape} and y_prob {yp.shape} must both be (N, {len(names)}) "
            f"for names {list(names)}"
        )
    return {
        name: choose_threshold(yt[:, k], yp[:, k], rule=rule, target=target)
        for k, name in enumerate(names)
    }
