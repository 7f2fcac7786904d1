"""Splits and labels: patients in two splits, images, patients and labels per split."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from chestxr.data.manifest import SPLITS, Manifest
from chestxr.data.splits import assign_splits


def patient_leaks(patient_ids: np.ndarray, given: np.ndarray) -> list[dict[str, Any]]:
    """Patients whose rows were given more than one split.

    Args:
        patient_ids: ``(N,)`` patient identifiers.
        given: ``(N,)`` split names, ``""`` where not given.

    Returns:
        ``{"patient_id", "rows": {split: count}}`` per leaking patient, sorted by patient.
    """
    per_patient: dict[str, Counter] = {}
    for pid, split in zip(patient_ids.tolist(), given.tolist(), strict=True):
        if split:
            per_patient.setdefault(str(pid), Counter())[split] += 1
    return [
        {"patient_id": pid, "rows": dict(sorted(c.items()))}
        for pid, c in sorted(per_patient.items())
        if len(c) > 1
    ]


def audit_splits(
    manifest: Manifest, leaks: Sequence[dict[str, Any]], split: dict[str, Any] | None = None
) -> np.ndarray:
    """Every row's split, as :class:`RadiographDataModule` assigns it, tolerating leaks.

    Rows of leaking patients keep their given split (the leak is reported, not resolved); the
    other rows go through :func:`chestxr.data.splits.assign_splits` with ``split``.

    Args:
        manifest: the manifest with its given ``splits``.
        leaks: :func:`patient_leaks` of it.
        split: ``val_fraction``, ``test_fraction``, ``seed``.

    Returns:
        ``(N,)`` array of ``train``/``val``/``test``.
    """
    given = np.asarray(manifest.splits, dtype=object)
    leaking = np.isin(manifest.patient_ids, [leak["patient_id"] for leak in leaks])
    assigned = assign_splits(
        manifest.patient_ids, manifest.targets, np.where(leaking, "", given), **(split or {})
    )
    return np.where(leaking & (given != ""), given, assigned)


def class_names(output: str, task: str, classes: Sequence[str]) -> tuple[str, str]:
    """Words for an output's (negative, positive) class."""
    if task == "binary":
        return str(classes[0]), str(classes[1])
    return f"no {output}", output


def row_labels(
    targets: np.ndarray, task: str, classes: Sequence[str], names: Sequence[str]
) -> list[str]:
    """A short label per row: the class (binary) or the positive findings joined by ``|``."""
    out = []
    for t in targets:
        if np.isnan(t).all():
            out.append("unknown")
        elif task == "binary":
            out.append(str(classes[int(t[0] > 0.5)]))
        else:
            found = [n for n, v in zip(names, t, strict=True) if v > 0.5]
            out.append("|".join(found) or "none")
    return out


def label_counts(
    targets: np.ndarray, splits: np.ndarray, names: Sequence[str]
) -> dict[str, dict[str, dict[str, int]]]:
    """Positives, negatives and unknowns of each output in each split (and ``all``)."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for split in (*SPLITS, "all"):
        t = targets if split == "all" else targets[splits == split]
        out[split] = {
            name: {
                "positive": int(np.sum(t[:, k] > 0.5)),
                "negative": int(np.sum(t[:, k] <= 0.5)),
                "unknown": int(np.sum(np.isnan(t[:, k]))),
            }
            for k, name in enumerate(names)
        }
    return out
