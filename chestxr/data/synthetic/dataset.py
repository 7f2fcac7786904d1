"""The data set: its plan (patients, studies, labels, sizes, encodings), the files and manifest,
the cache keyed by the parameters, and the re-rendering of any manifest row's phantom."""

from __future__ import annotations

import csv
import datetime
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from os import PathLike
from pathlib import Path

import numpy as np
from pydicom import dcmwrite
from pydicom.uid import generate_uid

from chestxr.data.synthetic.encode import MANUFACTURER, build_dataset, encode_pixels
from chestxr.data.synthetic.model import (
    FINDINGS,
    GENERATOR_VERSION,
    MIN_SIZE,
    NO_FINDING,
    Phantom,
    phantom_rng,
    sample_anatomy,
    sample_encoding,
)
from chestxr.data.synthetic.render import render_phantom
from chestxr.utils.files import atomic_write_csv, atomic_write_text

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.csv"
PARAMS_NAME = "synthetic.json"
MANIFEST_COLUMNS_HEAD = ("path", "label")
MANIFEST_COLUMNS_TAIL = (
    "patient_id",
    "study_uid",
    "series_uid",
    "sop_uid",
    "modality",
    "photometric",
    "bits_stored",
    "view",
    "sex",
    "age",
    "rows",
    "columns",
    "boxes",
)


# The set's parameters and their defaults, stated here only (conf/data/synthetic.yaml leaves them
# null = this default): n_patients None = round(0.7 * n_images).
DEFAULTS: dict[str, object] = {
    "n_images": 600,
    "n_patients": None,
    "findings": ("opacity",),
    "positive_fraction": 0.5,
    "seed": 0,
    "size_range": (320, 448),
}
_ASPECT_RANGE = (0.85, 1.15)
_MULTI_FINDING_P = 0.4  # with several findings, each is present with this chance (at least one)


def _resolve_params(**params: object) -> dict:
    """Validated, JSON-ready parameters with :data:`DEFAULTS` filled in (for absent or None ones).

    Raises:
        TypeError: a parameter that is not one of :data:`DEFAULTS`.
        ValueError: a value out of range or an unknown finding.
    """
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"unexpected synthetic parameters {unknown}; known: {sorted(DEFAULTS)}")
    p = {**DEFAULTS, **{key: value for key, value in params.items() if value is not None}}
    n_images, n_patients, findings = p["n_images"], p["n_patients"], p["findings"]
    positive_fraction, seed, size_range = p["positive_fraction"], p["seed"], p["size_range"]
    if isinstance(findings, str):
        findings = (findings,)
    findings = tuple(str(f) for f in findings)
    if not findings or len(set(findings)) != len(findings) or set(findings) - set(FINDINGS):
        raise ValueError(f"findings must be distinct names from {FINDINGS}, got {list(findings)}")
    findings = tuple(f for f in FINDINGS if f in findings)
    n_images = int(n_images)
    if n_images < 1:
        raise ValueError(f"n_images must be at least 1, got {n_images}")
    if n_patients is None:
        n_patients = max(1, round(0.7 * n_images))
    n_patients = int(n_patients)
    if not 1 <= n_patients <= n_images:
        raise ValueError(f"n_patients must be in [1, n_images={n_images}], got {n_patients}")
    if not 0.0 <= float(positive_fraction) <= 1.0:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    lo, hi = (int(v) for v in size_range)
    if not MIN_SIZE <= lo <= hi:
        raise ValueError(
            f"size_range must be (lo, hi) with {MIN_SIZE} <= lo <= hi, got {size_range}"
        )
    return {
        "n_images": n_images,
        "n_patients": n_patients,
        "findings": list(findings),
        "positive_fraction": float(positive_fraction),
        "seed": int(seed),
        "size_range": [lo, hi],
    }


def _params_key(params: dict) -> str:
    text = json.dumps({"version": GENERATOR_VERSION, **params}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _draw_size(rng: np.random.Generator, lo: int, hi: int) -> tuple[int, int]:
    """Rows and columns in [lo, hi] with aspect in 0.85..1.15, independent of anything else."""
    while True:
        rows, cols = (int(v) for v in rng.integers(lo, hi + 1, size=2))
        if _ASPECT_RANGE[0] <= cols / rows <= _ASPECT_RANGE[1]:
            return rows, cols


def _studies_per_patient(rng: np.random.Generator, n_images: int, n_patients: int) -> np.ndarray:
    """At least one study per patient; the rest spread so some have 2-3 (more only if needed)."""
    counts = np.ones(n_patients, dtype=np.int64)
    cap = 3
    for _ in range(n_images - n_patients):
        open_ = np.flatnonzero(counts < cap)
        while open_.size == 0:
            cap += 1
            open_ = np.flatnonzero(counts < cap)
        counts[open_[rng.integers(open_.size)]] += 1
    return counts


def _image_findings(
    rng: np.random.Generator, n_images: int, findings: tuple[str, ...], positive_fraction: float
) -> list[tuple[str, ...]]:
    """Findings per image: exactly round(fraction * n) positives, at least one finding each."""
    n_pos = round(positive_fraction * n_images)
    positive = np.zeros(n_images, dtype=bool)
    positive[rng.permutation(n_images)[:n_pos]] = True
    out: list[tuple[str, ...]] = []
    for pos in positive:
        if not pos:
            out.append(())
            continue
        if len(findings) == 1:
            out.append(findings)
            continue
        while True:
            present = rng.uniform(size=len(findings)) < _MULTI_FINDING_P
            if present.any():
                break
        out.append(tuple(f for f, p in zip(findings, present, strict=True) if p))
    return out


def _width(n: int) -> int:
    return max(4, len(str(n)))


def generate_synthetic(out_dir: str | PathLike[str], **params: object) -> Path:
    """Write a synthetic chest radiograph data set: DICOM files and a manifest.

    Files go to ``out_dir/images/P0007/S1/IM0001.dcm`` (patient, study number, instance); the
    manifest ``out_dir/manifest.csv`` has one row per image (see :data:`MANIFEST_COLUMNS_TAIL`) and
    ``out_dir/synthetic.json`` records the parameters. The same arguments write identical files.

    Args:
        out_dir: destination folder (created).
        **params: the set's parameters; :data:`DEFAULTS` for those absent or None:

            - ``n_images``: number of images (one per study).
            - ``n_patients``: number of patients; ``round(0.7 * n_images)`` when None.
            - ``findings``: the findings that positive images may have, from :data:`FINDINGS`.
            - ``positive_fraction``: share of images with at least one finding.
            - ``seed``: seed of everything.
            - ``size_range``: inclusive range of rows and columns (aspect within 0.85..1.15).

    Returns:
        The manifest path.

    Raises:
        TypeError: an unknown parameter.
        ValueError: a parameter out of range or an unknown finding.
    """
    params = _resolve_params(**params)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    findings_t = tuple(params["findings"])
    n_images, n_patients, seed = params["n_images"], params["n_patients"], params["seed"]
    key = _params_key(params)
    log.info("generating %d synthetic images of %d patients into %s", n_images, n_patients, out)

    rng = np.random.default_rng(seed)
    counts = _studies_per_patient(rng, n_images, n_patients)
    image_findings = _image_findings(rng, n_images, findings_t, params["positive_fraction"])
    pw = _width(n_patients)
    epoch = datetime.date(2012, 1, 1)

    rows_out: list[dict] = []
    index = 0
    for p in range(n_patients):
        number = f"{p + 1:0{pw}d}"
        patient = {
            "id": f"P{number}",
            "name": f"SYNTHETIC^{number}",
            "sex": "F" if rng.uniform() < 0.5 else "M",
        }
        base_age = int(rng.integers(18, 90))
        date = epoch + datetime.timedelta(days=int(rng.integers(0, 3000)))
        first_date = date
        patient["birth_date"] = (date - datetime.timedelta(days=365 * base_age + 100)).strftime(
            "%Y%m%d"
        )
        anatomy = sample_anatomy(phantom_rng(seed, 1, p))
        for k in range(int(counts[p])):
            if k:
                date += datetime.timedelta(days=int(rng.integers(20, 800)))
            rows, cols = _draw_size(rng, *params["size_range"])
            encoding = sample_encoding(rng)
            view = "PA" if rng.uniform() < 0.7 else "AP"
            fov_mm = rng.uniform(350.0, 430.0)
            seconds = int(rng.integers(7 * 3600, 19 * 3600))
            uid_src = [MANUFACTURER, GENERATOR_VERSION, key, patient["id"], str(k + 1)]
            study = {
                "study_uid": generate_uid(entropy_srcs=[*uid_src, "study"]),
                "series_uid": generate_uid(entropy_srcs=[*uid_src, "series"]),
                "sop_uid": generate_uid(entropy_srcs=[*uid_src, "instance"]),
                "date": date.strftime("%Y%m%d"),
                "time": f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}",
                "age": base_age + (date - first_date).days // 365,
                "view": view,
                "number": k + 1,
            }
            present = image_findings[index]
            phantom = render_phantom(
                phantom_rng(seed, 2, index), rows, cols, present, anatomy=anatomy
            )
            stored = encode_pixels(phantom.attenuation, encoding)
            ds = build_dataset(
                stored,
                encoding,
                body_mask=phantom.attenuation > 0.15,
                pixel_spacing=fov_mm / math.sqrt(rows * cols),
                patient=patient,
                study=study,
            )
            rel = Path("images", patient["id"], f"S{k + 1}", "IM0001.dcm")
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            dcmwrite(out / rel, ds, enforce_file_format=True)
            row = {"path": rel.as_posix(), "label": "|".join(present) or NO_FINDING}
            row.update({f: int(f in present) for f in findings_t})
            row.update(
                patient_id=patient["id"],
                study_uid=study["study_uid"],
                series_uid=study["series_uid"],
                sop_uid=study["sop_uid"],
                modality=encoding.modality,
                photometric=encoding.photometric,
                bits_stored=encoding.bits_stored,
                view=view,
                sex=patient["sex"],
                age=study["age"],
                rows=rows,
                columns=cols,
                boxes=json.dumps(list(phantom.boxes)),
            )
            rows_out.append(row)
            index += 1

    columns = [*MANIFEST_COLUMNS_HEAD, *findings_t, *MANIFEST_COLUMNS_TAIL]
    params_text = json.dumps({"version": GENERATOR_VERSION, **params})
    atomic_write_text(out / PARAMS_NAME, params_text + "\n", overwrite=True)
    manifest = out / MANIFEST_NAME
    body = [[row.get(c, "") for c in columns] for row in rows_out]
    atomic_write_csv(manifest, columns, body, overwrite=True)
    log.info("wrote %s (%d rows)", manifest, len(rows_out))
    return manifest


def ensure_synthetic(cache_dir: str | PathLike[str], **params) -> Path:
    """The synthetic data set for ``params``, generated on first use and cached.

    The folder is ``cache_dir/synthetic-<hash of the parameters and generator version>``. It is
    generated into a temporary sibling and renamed into place, so a reader never sees a partial
    set; when another process finishes first, its folder is used.

    Args:
        cache_dir: where the data sets live.
        **params: keyword arguments of :func:`generate_synthetic`.

    Returns:
        The manifest path.

    Raises:
        TypeError: a parameter that is not one of :data:`DEFAULTS`.
        ValueError: a parameter out of range.
        FileExistsError: the target folder exists without a manifest (delete it).
    """
    resolved = _resolve_params(**params)
    cache = Path(cache_dir)
    final = cache / f"synthetic-{_params_key(resolved)}"
    manifest = final / MANIFEST_NAME
    if manifest.is_file():
        log.info("using cached synthetic data set %s", final)
        return manifest
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=cache))
    try:
        generate_synthetic(tmp, **resolved)
        try:
            os.rename(tmp, final)
        except OSError:
            if not manifest.is_file():
                raise FileExistsError(
                    f"{final} exists but holds no {MANIFEST_NAME}; delete it and retry"
                ) from None
            log.info("another process generated %s meanwhile; using it", final)
        else:
            log.info("generated synthetic data set %s", final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def regenerate_phantom(
    manifest_path: str | PathLike[str], index: int, *, paint_findings: bool = True
) -> Phantom:
    """Re-render the float phantom behind row ``index`` of a synthetic manifest.

    Args:
        manifest_path: a manifest written by :func:`generate_synthetic`.
        index: the row (0-based, in file order).
        paint_findings: False renders the same image without its lesions.

    Returns:
        The phantom whose encoding is the row's DICOM file.

    Raises:
        FileNotFoundError: no ``synthetic.json`` beside the manifest.
        IndexError: ``index`` beyond the manifest.
    """
    manifest_path = Path(manifest_path)
    params_file = manifest_path.with_name(PARAMS_NAME)
    if not params_file.is_file():
        raise FileNotFoundError(f"{params_file} not found: not a synthetic data set")
    params = json.loads(params_file.read_text(encoding="utf-8"))
    with open(manifest_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not 0 <= index < len(rows):
        raise IndexError(f"index {index} outside the manifest's {len(rows)} rows")
    row = rows[index]
    seed = int(params["seed"])
    patient = int(row["patient_id"][1:]) - 1
    present = () if row["label"] == NO_FINDING else tuple(row["label"].split("|"))
    return render_phantom(
        phantom_rng(seed, 2, index),
        int(row["rows"]),
        int(row["columns"]),
        present,
        anatomy=sample_anatomy(phantom_rng(seed, 1, patient)),
        paint_findings=paint_findings,
    )
