"""The data-set audit: leaks, duplicates, unreadable files and shortcuts, found before training.

:func:`audit_manifest` reads every image of a manifest once (in worker processes) and reports, as
a dictionary of schema ``chestxr.audit/1`` (see :data:`SCHEMA` and ``data/README.md``):

- ``unreadable``: files the reader refuses, with its reason;
- ``exact_duplicates``: files with the same sha256; ``near_duplicates``: images whose thumbnail
  hashes (``thumbnail`` x ``thumbnail`` area-averaged grey values, mean subtracted, sign bits) are
  within ``near_duplicate_bits`` bits of each other; each group says whether it spans splits;
- ``patient_leaks``: patients whose rows were given different splits in the manifest;
- ``splits`` and ``label_counts``: images, patients and positives / negatives / unknowns per split;
- ``files`` and ``dicom``: formats, modes, DICOM modality, photometric, transfer syntax, view,
  manufacturer and pixel spacing range (from headers);
- ``properties`` and ``shortcuts``: how well each per-image property (height, width, aspect
  ratio, bits stored, colour mode, view position, file format) alone separates the classes.

``findings`` counts each kind in :data:`FINDING_KINDS`; ``failed`` lists the kinds of
``fail_on`` that were found (:func:`exit_status` turns it into the command's exit status).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from typing import Any

import numpy as np
from PIL import Image
from pydicom.uid import UID
from sklearn.metrics import roc_auc_score

from chestxr.data.manifest import SPLITS, Manifest
from chestxr.data.splits import assign_splits
from chestxr.io import DEFAULT_MAX_PIXELS, RadiographReadError, read_header, read_radiograph

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
_HASH_BLOCK = 1024


# --- reading: one pass over the files, in worker processes ---------------------------------------


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def thumbnail_hash(image: np.ndarray, size: int = 16) -> np.ndarray:
    """Perceptual hash: area-resize to ``size`` x ``size``, subtract the mean, keep the sign bits.

    Args:
        image: 2-D grey image.
        size: thumbnail side; the hash has ``size * size`` bits.

    Returns:
        bool array of ``size * size`` bits (True where the thumbnail is above its mean).

    Raises:
        ValueError: ``size`` < 2 or ``image`` is not 2-D.
    """
    if size < 2:
        raise ValueError(f"thumbnail size must be >= 2, got {size!r}")
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}")
    thumb = np.asarray(Image.fromarray(image, mode="F").resize((size, size), Image.Resampling.BOX))
    return (thumb > thumb.mean()).reshape(-1)


def scan_file(
    path: str,
    *,
    thumbnail: int = 16,
    frame: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    voi: str = "header",
) -> dict[str, Any]:
    """Everything the audit needs from one file: sha256, header, thumbnail hash, or why not.

    Args:
        path: the image file.
        thumbnail: thumbnail side of the hash.
        frame, max_pixels, voi: as for :func:`chestxr.io.read_radiograph` (the training settings).

    Returns:
        ``path``, ``sha256`` (None when the file cannot be opened), ``header``
        (:func:`chestxr.io.read_header`), ``hash`` (packed bits, uint8) and ``error`` (the
        reader's reason, or None).
    """
    out: dict[str, Any] = {"path": path, "sha256": None, "header": None, "hash": None}
    out["error"] = None
    with contextlib.suppress(OSError):  # the reader says why below
        out["sha256"] = file_sha256(path)
    try:
        out["header"] = read_header(path)
        image = read_radiograph(path, frame=frame, max_pixels=max_pixels, voi=voi)
    except RadiographReadError as err:
        out["error"] = err.reason
        return out
    out["hash"] = np.packbits(thumbnail_hash(image, thumbnail))
    return out


def scan_files(paths: Sequence[str], *, workers: int = 2, **options: Any) -> list[dict[str, Any]]:
    """:func:`scan_file` over ``paths``, in ``workers`` processes (0 or 1: in this process).

    Args:
        paths: image files.
        workers: worker processes.
        **options: keyword arguments of :func:`scan_file`.

    Returns:
        One result per path, in order.
    """
    scan = partial(scan_file, **options)
    n = len(paths)
    step = max(50, n // 10)
    results: list[dict[str, Any]] = []

    def collect(it: Iterable[dict[str, Any]]) -> None:
        for result in it:
            results.append(result)
            if len(results) % step == 0 or len(results) == n:
                log.info("audit: read %d/%d files", len(results), n)

    if workers <= 1 or n < 2:
        collect(map(scan, paths))
        return results
    chunksize = max(1, min(64, n // (workers * 8)))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        collect(pool.map(scan, paths, chunksize=chunksize))
    return results


# --- duplicates --------------------------------------------------------------------------------


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def hamming_groups(bits: np.ndarray, max_bits: int) -> list[list[int]]:
    """Groups of hashes linked by Hamming distance <= ``max_bits`` (transitively).

    Pigeonhole (multi-index hashing): split the bits into ``max_bits + 1`` interleaved parts; two
    hashes within ``max_bits`` agree exactly on at least one part, so only hashes sharing a part
    are compared. Near-linear unless many hashes share parts.

    Args:
        bits: ``(N, B)`` bool hashes.
        max_bits: largest distance that links two hashes (0: identical hashes only).

    Returns:
        Index lists (sorted) of the groups with two or more members.

    Raises:
        ValueError: ``max_bits`` negative or not below the hash length.
    """
    bits = np.asarray(bits, dtype=bool)
    n, length = bits.shape
    if not 0 <= max_bits < length:
        raise ValueError(f"max_bits must be in [0, {length}), got {max_bits!r}")
    # Identical hashes first, then distances between the distinct ones only.
    distinct, of_row = np.unique(bits, axis=0, return_inverse=True)
    of_row = of_row.reshape(-1)
    uf = _UnionFind(len(distinct))
    as_float = distinct.astype(np.float32)
    for part in range(max_bits + 1 if max_bits else 0):
        keys = np.packbits(distinct[:, part :: max_bits + 1], axis=1)
        _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
        order = np.argsort(inverse.reshape(-1), kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)])
        for g in np.flatnonzero(counts > 1):
            members = order[starts[g] : starts[g + 1]]
            sub = as_float[members]
            for lo in range(0, len(members), _HASH_BLOCK):
                block = sub[lo : lo + _HASH_BLOCK]
                # Hamming distance = a.(1-b) + (1-a).b, exact in float32 for B < 2**24
                dist = block @ (1.0 - sub).T + (1.0 - block) @ sub.T
                for i, j in zip(*np.nonzero(dist <= max_bits + 0.5), strict=True):
                    if lo + i < j:
                        uf.union(int(members[lo + i]), int(members[j]))
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(uf.find(int(of_row[i])), []).append(i)
    return [g for g in groups.values() if len(g) > 1]


# --- splits and labels -------------------------------------------------------------------------


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


# --- headers -----------------------------------------------------------------------------------


def _counts(values: Iterable[Any]) -> dict[str, int]:
    counts = Counter("(none)" if v is None else str(v) for v in values)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _syntax_name(uid: str | None) -> str | None:
    if uid is None:
        return None
    name = UID(uid).name
    return name if name == uid else f"{name} ({uid})"


def header_summary(headers: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Counts over file headers: (all files, DICOM files only).

    Args:
        headers: :func:`chestxr.io.read_header` results of the readable files.

    Returns:
        ``files``: counts of format, mode (PNG/JPEG) and bits stored; ``dicom``: ``files`` and
        counts of modality, photometric, transfer syntax, view position, manufacturer, bits
        stored, and ``pixel_spacing_mm`` (row/column min and max, files without spacing).
    """
    raster = [h for h in headers if h["format"] != "dicom"]
    dicom = [h for h in headers if h["format"] == "dicom"]
    files = {
        "format": _counts(h["format"] for h in headers),
        "mode": _counts(h["mode"] for h in raster),
        "bits_stored": _counts(h["bits_stored"] for h in headers),
    }
    spacing = np.array([h["pixel_spacing"] for h in dicom if h["pixel_spacing"]], dtype=float)
    spacing_range = (
        {"row": None, "column": None}
        if not len(spacing)
        else {
            "row": [float(spacing[:, 0].min()), float(spacing[:, 0].max())],
            "column": [float(spacing[:, 1].min()), float(spacing[:, 1].max())],
        }
    )
    summary: dict[str, Any] = {
        "files": len(dicom),
        "modality": _counts(h["modality"] for h in dicom),
        "photometric": _counts(h["photometric"] for h in dicom),
        "transfer_syntax": _counts(_syntax_name(h["transfer_syntax"]) for h in dicom),
        "view_position": _counts(h["view_position"] for h in dicom),
        "manufacturer": _counts(h["manufacturer"] for h in dicom),
        "bits_stored": _counts(h["bits_stored"] for h in dicom),
        "pixel_spacing_mm": {**spacing_range, "missing": len(dicom) - len(spacing)},
    }
    return files, summary


# --- shortcuts ---------------------------------------------------------------------------------


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


# --- the audit ---------------------------------------------------------------------------------


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
    unknown = sorted(set(fail_on) - set(FINDING_KINDS))
    if unknown:
        raise ValueError(f"audit.fail_on holds unknown kind(s) {unknown}; known: {FINDING_KINDS}")
    if max_files is not None and max_files < 1:
        raise ValueError(f"audit.max_files must be a positive integer or null, got {max_files!r}")
    if not 0.5 <= shortcut_auc <= 1:
        raise ValueError(f"audit.shortcut_auc must be in [0.5, 1], got {shortcut_auc!r}")
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

    # Exact duplicates: rows grouped by sha256.
    by_sha: dict[str, list[int]] = {}
    for i, s in zip(rows, row_scans, strict=True):
        if s["sha256"] is not None:
            by_sha.setdefault(s["sha256"], []).append(int(i))
    exact = [
        {
            "sha256": sha,
            "across_splits": len({splits[i] for i in members}) > 1,
            "members": [member(i) for i in members],
        }
        for sha, members in by_sha.items()
        if len(members) > 1
    ]

    # Near duplicates: thumbnail hashes within near_duplicate_bits, more than one distinct file.
    hashed = [(int(i), s) for i, s in zip(rows, row_scans, strict=True) if s["hash"] is not None]
    near = []
    if len(hashed) > 1:
        bits = np.unpackbits(np.stack([s["hash"] for _, s in hashed]), axis=1)
        bits = bits[:, : thumbnail * thumbnail].astype(bool)
        for group in hamming_groups(bits, near_duplicate_bits):
            if len({hashed[g][1]["sha256"] for g in group}) < 2:
                continue  # one file (exact duplicates are reported above)
            members = [hashed[g][0] for g in group]
            near.append(
                {
                    "max_hamming": _max_hamming(bits[group]),
                    "across_splits": len({splits[i] for i in members}) > 1,
                    "members": [member(i) for i in members],
                }
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


def _max_hamming(bits: np.ndarray, limit: int = 2000) -> int | None:
    """Largest Hamming distance within a group (None past ``limit`` distinct hashes)."""
    u = np.unique(bits, axis=0).astype(np.float32)
    if len(u) > limit:
        return None
    return int((u @ (1.0 - u).T + (1.0 - u) @ u.T).max())


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


# --- text --------------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    cells = [[str(h) for h in header], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[j]) for r in cells) for j in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return ["  " + line for line in lines]


def _members(members: Sequence[dict[str, Any]]) -> str:
    return ", ".join(
        f"{m['path']} [{m['split']}, {m['patient_id']}, {m['label']}]" for m in members
    )


def format_report(report: dict[str, Any], max_items: int = 20) -> str:
    """The report as readable text tables (what ``python -m chestxr.audit`` prints).

    Args:
        report: :func:`audit_manifest`'s report.
        max_items: longest listing of unreadable files, duplicate groups and leaks.

    Returns:
        The text, ending with a newline.
    """
    out = [
        f"chestxr audit of {report['manifest']}",
        f"  {report['rows']} rows, {report['files_read']} files read"
        + (" (a random sample: audit.max_files)" if report["sampled"] else "")
        + f" in {report['timing_s']['total']:.1f} s; task {report['task']}, "
        f"classes {report['classes']}",
        "",
        "Findings",
    ]
    out += _table(
        ["kind", "count", "fails"],
        [[k, v, "FAIL" if k in report["failed"] else ""] for k, v in report["findings"].items()],
    )
    out += ["", "Splits and labels"]
    rows = []
    for s in (*SPLITS, "all"):
        info = report["splits"].get(s, {})
        for name, c in report["label_counts"][s].items():
            rows.append(
                [
                    s,
                    info.get("images", report["rows"]),
                    info.get("patients", ""),
                    name,
                    c["positive"],
                    c["negative"],
                    c["unknown"],
                ]
            )
    out += _table(["split", "images", "patients", "output", "pos", "neg", "unknown"], rows)

    def listing(title: str, items: Sequence[Any], line) -> None:
        if not items:
            return
        out.extend(["", f"{title} ({len(items)})"])
        out.extend(f"  {line(x)}" for x in items[:max_items])
        if len(items) > max_items:
            out.append(f"  ... {len(items) - max_items} more in audit.json")

    listing(
        "Patients in more than one given split",
        report["patient_leaks"],
        lambda x: f"{x['patient_id']}: {x['rows']}",
    )
    listing("Unreadable files", report["unreadable"], lambda x: f"{x['path']}: {x['reason']}")
    listing(
        "Exact duplicates (same bytes)",
        report["exact_duplicates"],
        lambda g: ("ACROSS SPLITS: " if g["across_splits"] else "") + _members(g["members"]),
    )
    listing(
        f"Near duplicates (thumbnail hash within {report['settings']['near_duplicate_bits']} bits)",
        report["near_duplicates"],
        lambda g: (
            ("ACROSS SPLITS: " if g["across_splits"] else "")
            + f"(<= {g['max_hamming']} bits apart) "
            + _members(g["members"])
        ),
    )

    out += ["", "Files"]
    for key, counts in report["files"].items():
        if counts:
            out.append(f"  {key}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    dicom = report["dicom"]
    if dicom["files"]:
        out += ["", f"DICOM headers ({dicom['files']} files)"]
        for key in ("modality", "photometric", "transfer_syntax", "view_position", "manufacturer"):
            out.append(f"  {key}: " + ", ".join(f"{k} {v}" for k, v in dicom[key].items()))
        spacing = dicom["pixel_spacing_mm"]
        out.append(
            f"  pixel spacing (mm): row {spacing['row']}, column {spacing['column']}, "
            f"missing {spacing['missing']}"
        )

    out += ["", f"Shortcut checks (warn above AUC {report['settings']['shortcut_auc']})"]
    out += _table(
        ["property", "output", "n", "AUC", "warn"],
        [
            [
                c["property"],
                c["output"],
                c["n"],
                f"{c['separation']:.3f}",
                "WARN" if c["warning"] else "",
            ]
            for c in report["properties"]
        ],
    )
    for s in report["shortcuts"]:
        out.append(f"  WARNING: {s['message']}")
    result = f"FAIL ({', '.join(report['failed'])})" if report["failed"] else "pass"
    out += ["", f"Result: {result}"]
    return "\n".join(out) + "\n"
