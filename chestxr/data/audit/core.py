"""The audit of a manifest: every check run over one scan of the files, as one report."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from chestxr.data.audit.duplicates import exact_duplicates, near_duplicates
from chestxr.data.audit.headers import header_summary
from chestxr.data.audit.scan import scan_files
from chestxr.data.audit.shortcuts import VIEW_COLUMNS, image_properties, shortcut_checks
from chestxr.data.audit.splits import audit_splits, label_counts, patient_leaks, row_labels
from chestxr.data.manifest import SPLITS, Manifest
from chestxr.io import DEFAULT_MAX_PIXELS

log = logging.getLogger(__name__)


SCHEMA = "chestxr.audit/1"
#: Kinds of finding counted in ``report["findings"]``; ``fail_on`` names some of them.
FINDING_KINDS = (
    "unreadable",
    "patient_leak",
    "duplicate_across_splits",
    "near_duplicate_across_splits",
    "shortcut",
)
#: Per-image properties checked for shortcuts: name -> (words, numeric?).


def _check_settings(fail_on: Sequence[str], max_files: int | None, shortcut_auc: float) -> None:
    """Refuse unknown finding kinds and out-of-range settings, naming the ``audit.`` key."""
    unknown = sorted(set(fail_on) - set(FINDING_KINDS))
    if unknown:
        raise ValueError(f"audit.fail_on holds unknown kind(s) {unknown}; known: {FINDING_KINDS}")
    if max_files is not None and max_files < 1:
        raise ValueError(f"audit.max_files must be a positive integer or null, got {max_files!r}")
    if not 0.5 <= shortcut_auc <= 1:
        raise ValueError(f"audit.shortcut_auc must be in [0.5, 1], got {shortcut_auc!r}")


def audit_manifest(
    manifest: Manifest,
    *,
    task: str,
    classes: Sequence[str],
    split: dict[str, Any] | None = None,
    preprocess: dict[str, Any] | None = None,
    thumbnail: int = 16,
    near_duplicate_bits: int = 4,
    workers: int = 2,
    shortcut_auc: float = 0.7,
    pure_category_p: float = 1e-3,
    max_files: int | None = None,
    fail_on: Sequence[str] = ("patient_leak", "duplicate_across_splits", "unreadable"),
    seed: int = 0,
) -> dict[str, Any]:
    """Audit a manifest (loaded with its given splits, files not checked) and its images.

    Args:
        manifest: from :func:`chestxr.data.manifest.load_manifest` with ``check_files=False``
            (a missing file is reported as unreadable).
        task: ``binary`` or ``multilabel``.
        classes: the task's classes.
        split: ``val_fraction``, ``test_fraction``, ``seed`` for rows without a given split.
        preprocess: the data config's preprocessing (``frame``, ``max_pixels``, ``voi`` are used
            to read the images as training would; ``resize`` words the aspect-ratio warning).
        thumbnail: side of the thumbnail hash.
        near_duplicate_bits: largest Hamming distance between near-duplicate hashes.
        workers: reader processes (0 or 1: in this process).
        shortcut_auc: separation above which a property is reported as a shortcut.
        pure_category_p: chance below which a one-class category is reported as a shortcut.
        max_files: read only this many rows' files (a seeded random sample); leaks, splits and
            label counts still use every row.
        fail_on: finding kinds that fail the audit.
        seed: seed of the ``max_files`` sample.

    Returns:
        The report (schema :data:`SCHEMA`).

    Raises:
        ValueError: an unknown kind in ``fail_on``, or invalid numeric settings.
    """
    started = time.perf_counter()
    _check_settings(fail_on, max_files, shortcut_auc)
    preprocess = dict(preprocess or {})
    names = list(manifest.output_names)
    n_rows = len(manifest)
    raw_paths = manifest.columns.get("path", manifest.paths)

    # Splits: given ones checked for leaks first (assign_splits would raise), then assigned.
    leaks = patient_leaks(manifest.patient_ids, manifest.splits)
    splits = audit_splits(manifest, leaks, split)
    labels = row_labels(manifest.targets, task, classes, names)

    # One pass over the files.
    rows = np.arange(n_rows)
    if max_files is not None and max_files < n_rows:
        rows = np.sort(np.random.default_rng(seed).choice(n_rows, max_files, replace=False))
    unique_paths = list(dict.fromkeys(manifest.paths[rows].tolist()))
    scan_started = time.perf_counter()
    scans = scan_files(
        unique_paths,
        workers=workers,
        thumbnail=thumbnail,
        frame=preprocess.get("frame"),
        max_pixels=preprocess.get("max_pixels", DEFAULT_MAX_PIXELS),
        voi=preprocess.get("voi", "header"),
    )
    scan_s = time.perf_counter() - scan_started
    by_path = {s["path"]: s for s in scans}
    row_scans = [by_path[p] for p in manifest.paths[rows].tolist()]

    def member(i: int) -> dict[str, Any]:
        return {
            "path": str(raw_paths[i]),
            "split": str(splits[i]),
            "patient_id": str(manifest.patient_ids[i]),
            "label": labels[i],
        }

    unreadable = [
        {**member(int(i)), "reason": s["error"]}
        for i, s in zip(rows, row_scans, strict=True)
        if s["error"] is not None
    ]

    exact = exact_duplicates(rows, row_scans, splits, member)
    near = near_duplicates(
        rows, row_scans, splits, member, thumbnail=thumbnail, max_bits=near_duplicate_bits
    )

    # Headers and shortcuts.
    files, dicom = header_summary([s["header"] for s in scans if s["header"] is not None])
    headers = [s["header"] if s["error"] is None else None for s in row_scans]
    view_column = next(
        (manifest.columns[c][rows] for c in VIEW_COLUMNS if c in manifest.columns), None
    )
    properties = image_properties(headers, view_column)
    checks = shortcut_checks(
        properties,
        manifest.targets[rows],
        names,
        task=task,
        classes=classes,
        threshold=shortcut_auc,
        pure_p=pure_category_p,
        resize=preprocess.get("resize"),
    )
    shortcuts = [
        {k: c[k] for k in ("property", "output", "auc", "separation", "message")}
        for c in checks
        if c["warning"]
    ]

    findings = {
        "unreadable": len({u["path"] for u in unreadable}),
        "patient_leak": len(leaks),
        "duplicate_across_splits": sum(g["across_splits"] for g in exact),
        "near_duplicate_across_splits": sum(g["across_splits"] for g in near),
        "shortcut": len(shortcuts),
    }
    given = np.asarray(manifest.splits) != ""
    report = {
        "schema": SCHEMA,
        "manifest": str(manifest.source),
        "task": task,
        "classes": [str(c) for c in classes],
        "output_names": names,
        "rows": n_rows,
        "files_read": len(unique_paths),
        "sampled": len(rows) < n_rows,
        "settings": {
            "thumbnail": thumbnail,
            "near_duplicate_bits": near_duplicate_bits,
            "shortcut_auc": shortcut_auc,
            "pure_category_p": pure_category_p,
            "max_files": max_files,
            "workers": workers,
            "fail_on": list(fail_on),
        },
        "findings": findings,
        "failed": [k for k in fail_on if findings[k] > 0],
        "splits": {
            s: {
                "images": int(np.sum(splits == s)),
                "patients": len(set(manifest.patient_ids[splits == s].tolist())),
                "given": int(np.sum((splits == s) & given)),
            }
            for s in SPLITS
        },
        "label_counts": label_counts(manifest.targets, splits, names),
        "patient_leaks": leaks,
        "unreadable": unreadable,
        "exact_duplicates": exact,
        "near_duplicates": near,
        "files": files,
        "dicom": dicom,
        "properties": checks,
        "shortcuts": shortcuts,
        "timing_s": {"read": round(scan_s, 2), "total": round(time.perf_counter() - started, 2)},
    }
    for kind in report["failed"]:
        log.warning("audit: %d finding(s) of kind %r (in fail_on)", findings[kind], kind)
    for s in shortcuts:
        log.warning("audit: possible shortcut: %s", s["message"])
    return _json_safe(report)


def _json_safe(obj: Any) -> Any:
    """Numbers rounded to 4 decimals, numpy scalars to Python, NaN to None."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return round(obj, 4) if math.isfinite(obj) else None
    return obj


def exit_status(report: dict[str, Any]) -> int:
    """1 when the audit found a kind listed in its ``fail_on``, else 0."""
    return 1 if report["failed"] else 0
