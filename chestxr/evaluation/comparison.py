"""Compare two models' ROC AUC on the same scans, from their ``predictions.csv`` files.

:func:`compare_predictions` joins two files written by
:func:`chestxr.evaluation.artefacts.write_evaluation` on ``path``, checks that they hold the same
scans, labels and patients, and returns the paired patient bootstrap of delta AUC = A - B and the
DeLong test (``python -m chestxr.compare`` writes it as ``comparison.json``).
"""

from __future__ import annotations

import logging
import os

import numpy as np

from chestxr.evaluation.artefacts import read_predictions
from chestxr.evaluation.bootstrap import paired_auc_difference

log = logging.getLogger(__name__)

SCHEMA = "chestxr.comparison/1"


def _pick_output(names: list[str], wanted: str | None, source: str) -> str:
    if wanted is None:
        if len(names) != 1:
            raise ValueError(f"{source} has outputs {names}: choose one with output=NAME")
        return names[0]
    if wanted not in names:
        raise ValueError(f"output {wanted!r} not in {source}; its outputs are {names}")
    return wanted


def _describe(paths: list[str], limit: int = 5) -> str:
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(paths[:limit]) + more


def compare_predictions(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    output: str | None = None,
    *,
    n_bootstrap: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """The paired comparison of two prediction files (model A minus model B).

    Args:
        a: ``predictions.csv`` of model A.
        b: ``predictions.csv`` of model B (same scans and labels, any row order).
        output: which output to compare; None: the only one.
        n_bootstrap: paired bootstrap resamples.
        seed: bootstrap seed.
        confidence: interval coverage.

    Returns:
        ``{"schema", "a", "b", "output", "auc_a", "auc_b", "delta", "ci", "p_value", ...,
        "delong": {..., "p_value": float | null, "reason": str | null}}`` (see
        :func:`chestxr.evaluation.bootstrap.paired_auc_difference`).

    Raises:
        ValueError: the files hold different scans, labels or patients, or the output is
            ambiguous or unknown.
    """
    pred_a, pred_b = read_predictions(a), read_predictions(b)
    name = _pick_output(pred_a["names"], output, str(a))
    _pick_output(pred_b["names"], name, str(b))
    ja, jb = pred_a["names"].index(name), pred_b["names"].index(name)

    rows_b = {p: i for i, p in enumerate(pred_b["paths"])}
    set_a = set(pred_a["paths"])
    if len(set_a) != len(pred_a["paths"]) or len(rows_b) != len(pred_b["paths"]):
        raise ValueError("a predictions file lists the same path twice; cannot join on path")
    only_a = [p for p in pred_a["paths"] if p not in rows_b]
    only_b = [p for p in pred_b["paths"] if p not in set_a]
    if only_a or only_b:
        raise ValueError(
            f"the files hold different scans: {len(only_a)} only in {a} "
            f"({_describe(only_a)}); {len(only_b)} only in {b} ({_describe(only_b)})"
        )
    order = np.array([rows_b[p] for p in pred_a["paths"]], dtype=np.int64)
    y_a = pred_a["y_true"][:, ja]
    y_b = pred_b["y_true"][order, jb]
    differ = ~((y_a == y_b) | (np.isnan(y_a) & np.isnan(y_b)))
    if differ.any():
        bad = [pred_a["paths"][i] for i in np.flatnonzero(differ)]
        raise ValueError(f"labels of {name!r} differ for {len(bad)} scans: {_describe(bad)}")
    pid_b = [pred_b["patient_ids"][i] for i in order]
    if pid_b != pred_a["patient_ids"]:
        raise ValueError("the two files assign different patient ids to the same scans")

    groups = pred_a["patient_ids"] if all(pred_a["patient_ids"]) else None
    if groups is None:
        log.warning("patient ids missing: bootstrapping scans instead of patients")
    result = paired_auc_difference(
        y_a,
        pred_a["y_prob"][:, ja],
        pred_b["y_prob"][order, jb],
        groups,
        n_resamples=n_bootstrap,
        seed=seed,
        confidence=confidence,
    )
    return {"schema": SCHEMA, "a": str(a), "b": str(b), "output": name, **result}
