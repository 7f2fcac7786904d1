"""The manifest CSV, chestxr's one input format, read into column arrays.

A manifest has one row per image and the columns ``path`` (relative to the CSV's folder, or
absolute), ``label``, ``patient_id``, optionally ``split`` (``train``/``val``/``test``; blank
rows are split by patient) and ``boxes`` (JSON list of ``{"x", "y", "width", "height",
"label"}`` in original pixel coordinates), plus any metadata columns (view, sex, modality...)
used for subgroup analysis.

Every task is a set of sigmoid outputs:

- ``binary``: ``classes=[NEGATIVE, POSITIVE]``; one output named after the positive class.
- ``multilabel``: ``classes`` are findings, one output each. Targets come from per-finding columns
  (``1``, ``0``, ``-1`` = uncertain, blank = unknown) when the CSV has a column for every finding,
  otherwise from ``label`` holding the present findings joined by ``|`` (or a no-finding token).

A target that is unknown is NaN, and NaN is masked in the loss, the metrics and the reports.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

TASKS = ("binary", "multilabel")
SPLITS = ("train", "val", "test")
REQUIRED_COLUMNS = ("path", "patient_id")
UNCERTAIN_POLICIES = ("ignore", "zeros", "ones")


class ManifestError(ValueError):
    """A manifest that cannot be used as it is; the message names the file, row or column."""


def output_names(task: str, classes: Sequence[str]) -> list[str]:
    """Names of the model's outputs for a task and its classes.

    Raises:
        ValueError: unknown task, or a binary task without exactly two classes.
    """
    classes = [str(c) for c in classes]
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes contain duplicates: {classes}")
    if task == "binary":
        if len(classes) != 2:
            raise ValueError(
                f"a binary task takes classes=[NEGATIVE, POSITIVE], got {classes}; "
                "for several findings use task=multilabel"
            )
        return [classes[1]]
    if not classes:
        raise ValueError("a multilabel task needs at least one finding in classes")
    return classes


@dataclass
class Manifest:
    """A manifest loaded into column arrays (cheap at 200,000 rows: no per-row objects).

    Attributes:
        source: the CSV file.
        paths: absolute image paths.
        patient_ids: patient identifiers (strings).
        targets: ``(N, K)`` float32, 1/0, NaN where unknown.
        output_names: the K output names.
        splits: ``train``/``val``/``test`` or ``""`` where the CSV left it blank.
        columns: every column of the CSV as read (strings), for metadata and boxes.
    """

    source: Path
    paths: np.ndarray
    patient_ids: np.ndarray
    targets: np.ndarray
    output_names: list[str]
    splits: np.ndarray
    columns: dict[str, np.ndarray] = field(repr=False)

    def __len__(self) -> int:
        return len(self.paths)

    def select(self, rows: np.ndarray) -> Manifest:
        """The manifest restricted to ``rows`` (a boolean mask or an index array)."""
        return Manifest(
            source=self.source,
            paths=self.paths[rows],
            patient_ids=self.patient_ids[rows],
            targets=self.targets[rows],
            output_names=self.output_names,
            splits=self.splits[rows],
            columns={k: v[rows] for k, v in self.columns.items()},
        )


def _read_columns(path: Path) -> dict[str, list[str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            try:
                header = [h.strip() for h in next(reader)]
            except StopIteration:
                raise ManifestError(f"{path}: the manifest is empty (no header row)") from None
            if len(set(header)) != len(header):
                raise ManifestError(f"{path}: duplicate column names in header {header}")
            rows = list(reader)
    except OSError as err:
        raise ManifestError(f"{path}: cannot read the manifest ({err.strerror or err})") from err
    except (UnicodeDecodeError, csv.Error) as err:
        raise ManifestError(f"{path}: not a readable UTF-8 CSV ({err})") from err
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise ManifestError(
                f"{path}: row {i + 2} has {len(row)} fields, the header has {len(header)}"
            )
    if not rows:
        raise ManifestError(f"{path}: the manifest has a header but no rows")
    return {name: [r[j].strip() for r in rows] for j, name in enumerate(header)}


def _targets_from_columns(
    path: Path, cols: dict[str, list[str]], findings: list[str], uncertain: str
) -> np.ndarray:
    uncertain_value = {"ignore": np.nan, "zeros": 0.0, "ones": 1.0}[uncertain]
    mapping = {"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "": np.nan}
    out = np.empty((len(cols["path"]), len(findings)), dtype=np.float32)
    for k, name in enumerate(findings):
        values = np.asarray(cols[name])
        uniq, inverse = np.unique(values, return_inverse=True)
        lookup = np.empty(len(uniq), dtype=np.float32)
        for j, v in enumerate(uniq):
            if v in mapping:
                lookup[j] = mapping[v]
            elif v in ("-1", "-1.0"):
                lookup[j] = uncertain_value
            else:
                row = int(np.flatnonzero(values == v)[0]) + 2
                raise ManifestError(
                    f"{path}: column {name!r} row {row} holds {v!r}; expected 1, 0, -1 or blank"
                )
        out[:, k] = lookup[inverse]
    return out


def _targets_from_labels(
    path: Path, labels: list[str], task: str, classes: list[str], no_finding: Sequence[str]
) -> np.ndarray:
    values = np.asarray(labels)
    uniq, inverse = np.unique(values, return_inverse=True)
    names = output_names(task, classes)
    lookup = np.zeros((len(uniq), len(names)), dtype=np.float32)
    for j, v in enumerate(uniq):
        if v == "":
            lookup[j] = np.nan
            continue
        tokens = [t.strip() for t in v.split("|")] if task == "multilabel" else [v]
        for t in tokens:
            if task == "binary" and t in classes:
                lookup[j, 0] = float(t == classes[1])
            elif task == "multilabel" and t in names:
                lookup[j, names.index(t)] = 1.0
            elif task == "multilabel" and t in no_finding:
                continue
            else:
                row = int(np.flatnonzero(values == v)[0]) + 2
                allowed = list(classes) + (list(no_finding) if task == "multilabel" else [])
                raise ManifestError(
                    f"{path}: unknown label {t!r} in row {row} (column 'label'); "
                    f"expected one of {allowed} (set data.classes to match the manifest)"
                )
    return lookup[inverse]


def _refuse_duplicate_paths(path: Path, paths: np.ndarray) -> None:
    """Refuse a manifest listing one image twice (it would count twice in every metric).

    Raises:
        ManifestError: naming the first duplicated image and the CSV rows that list it.
    """
    norm = np.asarray([os.path.normpath(p) for p in paths])  # a.png and ./a.png are one image
    uniq, first, counts = np.unique(norm, return_index=True, return_counts=True)
    if (counts == 1).all():
        return
    dup = counts > 1
    worst = uniq[dup][np.argmin(first[dup])]
    rows = (np.flatnonzero(norm == worst) + 2).tolist()
    raise ManifestError(
        f"{path}: {int(dup.sum())} image(s) listed more than once; {worst} is on rows {rows} "
        "(each image must appear once, or it would count twice in the metrics)"
    )


def load_manifest(
    path: str | os.PathLike[str],
    *,
    task: str,
    classes: Sequence[str],
    no_finding: Sequence[str] = ("No Finding", "normal"),
    uncertain: str = "ignore",
    check_files: bool = True,
    read_labels: bool = True,
) -> Manifest:
    """Read and validate a manifest CSV.

    Args:
        path: the CSV file.
        task: ``binary`` or ``multilabel``.
        classes: ``[NEGATIVE, POSITIVE]`` for binary; the findings for multilabel.
        no_finding: ``label`` tokens meaning "none of the findings" (multilabel).
        uncertain: policy for ``-1`` in per-finding columns: ``ignore`` (masked), ``zeros``,
            ``ones``.
        check_files: verify that every image file exists.
        read_labels: false for unlabelled scans (self-supervised pretraining): every target is
            unknown (NaN) and the label columns are neither needed nor read.

    Returns:
        The manifest as column arrays.

    Raises:
        ManifestError: unreadable CSV, missing column, unknown label or split, an image listed
            twice, missing image files.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    if uncertain not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain must be one of {UNCERTAIN_POLICIES}, got {uncertain!r}")
    classes = [str(c) for c in classes]
    names = output_names(task, classes)
    cols = _read_columns(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in cols]
    if missing:
        raise ManifestError(
            f"{path}: missing column(s) {missing}; a manifest needs {list(REQUIRED_COLUMNS)}, "
            "'label' (or one column per finding) and optionally 'split' and 'boxes'"
        )
    if not read_labels:
        targets = np.full((len(cols["path"]), len(names)), np.nan, dtype=np.float32)
    elif task == "multilabel" and all(n in cols for n in names):
        targets = _targets_from_columns(path, cols, names, uncertain)
    elif "label" in cols:
        targets = _targets_from_labels(path, cols["label"], task, classes, no_finding)
    else:
        raise ManifestError(f"{path}: no 'label' column (nor one column per finding {names})")

    empty_pid = np.flatnonzero(np.asarray(cols["patient_id"]) == "")
    if len(empty_pid):
        raise ManifestError(
            f"{path}: {len(empty_pid)} row(s) without patient_id (first: row {empty_pid[0] + 2}); "
            "splitting by patient needs it (use the image name if each image is its own patient)"
        )
    splits = np.asarray(cols.get("split", [""] * len(cols["path"])))
    bad = sorted(set(np.unique(splits)) - {*SPLITS, ""})
    if bad:
        raise ManifestError(f"{path}: column 'split' holds {bad}; expected {list(SPLITS)} or blank")

    root = str(path.parent)
    raw = cols["path"]
    paths = np.asarray([p if os.path.isabs(p) else os.path.join(root, p) for p in raw])
    _refuse_duplicate_paths(path, paths)
    if check_files:
        absent = [p for p in paths if not os.path.isfile(p)]
        if absent:
            raise ManifestError(
                f"{path}: {len(absent)} image file(s) listed but not found, e.g. {absent[:3]}"
            )
    unknown = int(np.isnan(targets).all(axis=1).sum())
    if unknown and read_labels:
        log.warning("%s: %d row(s) have no known label; they are masked in training", path, unknown)
    return Manifest(
        source=path,
        paths=paths,
        patient_ids=np.asarray(cols["patient_id"]),
        targets=targets,
        output_names=names,
        splits=splits,
        columns={k: np.asarray(v) for k, v in cols.items()},
    )
