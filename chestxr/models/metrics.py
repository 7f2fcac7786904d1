"""Per-output ROC AUC with unknown labels masked (used while training)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def masked_auc(y_true: np.ndarray, y_prob: np.ndarray) -> list[float | None]:
    """ROC AUC of each output over the rows whose label is known.

    Returns:
        One value per output; None where only one class is present.
    """
    y_true = np.asarray(y_true, dtype=np.float64).reshape(len(y_true), -1)
    y_prob = np.asarray(y_prob, dtype=np.float64).reshape(len(y_prob), -1)
    out: list[float | None] = []
    for k in range(y_true.shape[1]):
        known = ~np.isnan(y_true[:, k])
        t = y_true[known, k]
        if t.size == 0 or t.min() == t.max():
            out.append(None)
        else:
            out.append(float(roc_auc_score(t, y_prob[known, k])))
    return out
