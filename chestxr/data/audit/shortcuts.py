"""Shortcuts: per-image properties that alone separate the classes (by ROC AUC, or a category
holding one class only)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from chestxr.data.audit.splits import class_names

PROPERTIES = {
    "height": ("image height", True),
    "width": ("image width", True),
    "aspect_ratio": ("aspect ratio (width/height)", True),
    "bits_stored": ("bits stored", False),
    "colour_mode": ("colour mode", False),
    "view_position": ("view position", False),
    "format": ("file format", False),
}
#: Manifest columns that give the view when the file's header does not (PNG/JPEG exports).
VIEW_COLUMNS = ("view_position", "view", "ViewPosition")


def image_properties(
    headers: Sequence[dict[str, Any] | None], view_column: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """The per-image properties of :data:`PROPERTIES` (NaN / None where unknown).

    Args:
        headers: one header per row, None for unreadable files.
        view_column: the manifest's view column, used where the header has no view position.

    Returns:
        property name -> ``(N,)`` float array (numeric) or object array (categorical).
    """
    n = len(headers)
    height = np.full(n, np.nan)
    width = np.full(n, np.nan)
    cat: dict[str, np.ndarray] = {
        k: np.full(n, None, dtype=object) for k in ("bits_stored", "colour_mode", "view_position")
    }
    cat["format"] = np.full(n, None, dtype=object)
    for i, h in enumerate(headers):
        if h is None:
            continue
        height[i], width[i] = h["rows"], h["columns"]
        cat["bits_stored"][i] = None if h["bits_stored"] is None else str(h["bits_stored"])
        cat["colour_mode"][i] = h["mode"] if h["format"] != "dicom" else h["photometric"]
        view = h["view_position"]
        if not view and view_column is not None and view_column[i]:
            view = str(view_column[i]).strip().upper()
        cat["view_position"][i] = view or None
        cat["format"][i] = h["format"]
    return {
        "height": height,
        "width": width,
        "aspect_ratio": width / height,
        **cat,
    }


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def _numeric_check(x: np.ndarray, y: np.ndarray, names: tuple[str, str]) -> dict[str, Any]:
    auc = roc_auc_score(y, x) if np.ptp(x) > 0 else 0.5
    per_class = {}
    for c, name in enumerate(names):
        v = x[y == c]
        q25, median, q75 = np.percentile(v, [25, 50, 75])
        per_class[name] = {
            "n": len(v),
            "median": float(median),
            "q25": float(q25),
            "q75": float(q75),
        }
    return {"auc": float(auc), "per_class": per_class}


def _categorical_check(
    x: np.ndarray, y: np.ndarray, names: tuple[str, str], pure_p: float
) -> dict[str, Any]:
    cats, codes = np.unique(x.astype(str), return_inverse=True)
    codes = codes.reshape(-1)
    total = np.bincount(codes, minlength=len(cats))
    positive = np.bincount(codes, weights=y, minlength=len(cats))
    rate = positive / total
    auc = roc_auc_score(y, rate[codes]) if len(cats) > 1 else 0.5
    per_class = {
        name: {str(cats[j]): int(np.sum((codes == j) & (y == c))) for j in range(len(cats))}
        for c, name in enumerate(names)
    }
    # A category all of one class, improbable at the base rate (a rare but perfect shortcut,
    # which AUC hides when the category is small).
    base = float(y.mean())
    pure = []
    if len(cats) > 1:
        for j, cat in enumerate(cats):
            cls = 1 if rate[j] == 1 else 0 if rate[j] == 0 else None
            if cls is None:
                continue
            chance = (base if cls == 1 else 1 - base) ** int(total[j])
            if chance < pure_p:
                pure.append({"value": str(cat), "n": int(total[j]), "class": names[cls]})
    return {"auc": float(auc), "per_class": per_class, "pure_categories": pure}


def _message(
    prop: str, check: dict[str, Any], names: tuple[str, str], threshold: float, resize: str | None
) -> str:
    words, numeric = PROPERTIES[prop]
    per_class = check["per_class"]
    if numeric:
        sides = [f"{n} (median {_fmt(per_class[n]['median'])})" for n in names]
    else:
        sides = []
        for n in names:
            counts = {k: v for k, v in per_class[n].items() if v}
            total = sum(counts.values()) or 1
            parts = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in counts.items())
            sides.append(f"{n} ({parts})")
    auc = f"AUC {check['separation']:.2f}"
    pure = "; ".join(
        f"{words} {p['value']!r} holds {p['n']} image(s), all {p['class']}"
        for p in check.get("pure_categories", [])
    )
    if check["separation"] > threshold or not pure:
        text = f"{words} separates {sides[0]} from {sides[1]}: {auc}"
        text += f"; {pure}" if pure else ""
    else:
        text = f"{pure}: {sides[0]}, {sides[1]} ({auc})"
    if prop == "aspect_ratio" and resize == "pad":
        text += "; with resize=pad the padding alone can reveal the class"
    elif prop in ("height", "width"):
        text += "; the scale of the anatomy after resizing can reveal the class"
    elif prop == "colour_mode":
        text += "; colour files may differ in export (compression, grey levels)"
    return text


def shortcut_checks(
    properties: dict[str, np.ndarray],
    targets: np.ndarray,
    names: Sequence[str],
    *,
    task: str,
    classes: Sequence[str],
    threshold: float = 0.7,
    pure_p: float = 1e-3,
    resize: str | None = None,
) -> list[dict[str, Any]]:
    """How well each property alone separates each output's classes.

    Numeric properties are scored as they are; categorical ones by their category's positive
    rate. ``separation`` is max(AUC, 1 - AUC); a check warns when it exceeds ``threshold``, or
    when a category holds only one class with a chance below ``pure_p`` at the base rate.

    Args:
        properties: :func:`image_properties`.
        targets: ``(N, K)`` targets, NaN unknown.
        names: the K output names.
        task: ``binary`` or ``multilabel`` (for class words).
        classes: the task's classes.
        threshold: separation above which a property is a shortcut.
        pure_p: chance level below which a one-class category is a shortcut.
        resize: the preprocessing resize policy, for the message.

    Returns:
        One check per (property, output) with known values in both classes: ``property``,
        ``output``, ``n``, ``auc``, ``separation``, ``per_class``, ``pure_categories``
        (categorical), ``warning`` and ``message``.
    """
    checks = []
    for k, output in enumerate(names):
        words = class_names(output, task, classes)
        for prop, values in properties.items():
            numeric = PROPERTIES[prop][1]
            known = ~np.isnan(targets[:, k])
            if numeric:
                known &= np.isfinite(values)
            else:
                known &= np.array([v is not None for v in values], dtype=bool)
            y = (targets[known, k] > 0.5).astype(np.int64)
            if len(y) == 0 or y.min() == y.max():
                continue
            x = values[known]
            check = (
                _numeric_check(x.astype(float), y, words)
                if numeric
                else _categorical_check(x, y, words, pure_p)
            )
            check["separation"] = max(check["auc"], 1.0 - check["auc"])
            check["warning"] = bool(check["separation"] > threshold or check.get("pure_categories"))
            checks.append(
                {
                    "property": prop,
                    "output": output,
                    "n": len(y),
                    **check,
                    "message": _message(prop, check, words, threshold, resize),
                }
            )
    return checks
