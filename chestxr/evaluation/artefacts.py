"""The files of one evaluation run: written by :func:`write_evaluation`, read back by
:func:`read_predictions` (used by ``python -m chestxr.compare``).

The numbers come from :mod:`chestxr.evaluation.results`; this module only lays them out as
files, each written atomically through :mod:`chestxr.utils.files` (CSV cells that a spreadsheet
would run as formulas are neutralised there, e.g. a path ``=cmd`` is written ``'=cmd``).
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from chestxr.evaluation._arrays import as_2d
from chestxr.evaluation.bootstrap import roc_band
from chestxr.evaluation.html import render_summary
from chestxr.evaluation.plots import plot_confusion_matrix, plot_pr, plot_reliability, plot_roc
from chestxr.evaluation.results import CONFIDENCE, check_names, evaluate_predictions
from chestxr.utils.files import atomic_write_csv, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

_CORE_COLUMNS = ("path", "patient_id")


def safe_name(name: str) -> str:
    """File-name-safe version of an output name (used in per-output figure names)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "output"


def _cell(value: object) -> str:
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return ""
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return str(value)


def _write_predictions_csv(
    path: Path,
    paths: Sequence[str],
    patient_ids: np.ndarray | None,
    names: list[str],
    yt: np.ndarray,
    yp: np.ndarray,
    thresholds: Mapping[str, float],
    extra_columns: Mapping[str, Sequence],
) -> None:
    header = list(_CORE_COLUMNS)
    for name in names:
        header += [f"label_{name}", f"prob_{name}", f"pred_{name}"]
    header += list(extra_columns)

    def rows() -> Iterator[list]:
        for i, scan in enumerate(paths):
            row = [str(scan), "" if patient_ids is None else patient_ids[i]]
            for j, name in enumerate(names):
                label = "" if np.isnan(yt[i, j]) else str(int(yt[i, j]))
                pred = int(yp[i, j] >= thresholds[name])
                row += [label, repr(float(yp[i, j])), str(pred)]
            row += [_cell(col[i]) for col in extra_columns.values()]
            yield row

    atomic_write_csv(path, header, rows(), overwrite=True)


def write_evaluation(
    out_dir: str | os.PathLike,
    *,
    y_true: Sequence | np.ndarray,
    y_prob: Sequence | np.ndarray,
    names: Sequence[str],
    thresholds: Mapping[str, float] | Sequence[float] | float | None,
    patient_ids: Sequence | np.ndarray | None,
    paths: Sequence[str],
    extra_columns: Mapping[str, Sequence] | None = None,
    subgroups: Sequence[str] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    threshold_rule: Mapping | None = None,
    title: str = "chestxr evaluation",
    class_names: Sequence[str] | None = None,
    min_group_size: int = 30,
) -> dict:
    """Evaluate predictions and write every artefact of the run into ``out_dir``.

    Files (each written atomically; ``metrics.json`` last, so its presence marks a complete run):
    ``predictions.csv`` (``path, patient_id``, per output ``label_<name>, prob_<name>,
    pred_<name>``, then ``extra_columns``; empty label = unknown), ``roc.png`` (with the bootstrap
    band and operating point when K = 1), ``pr.png``, ``reliability.png``,
    ``confusion_matrix.png`` (K = 1) or ``roc_<name>.png`` + ``confusion_matrix_<name>.png`` per
    output (K > 1; ``<name>`` made file-safe), ``summary.html`` (self-contained) and
    ``metrics.json`` (schema in :mod:`chestxr.evaluation.results`).

    Args:
        out_dir: existing folder.
        y_true: (N, K) labels 0/1 with NaN where unknown, or (N,).
        y_prob: (N, K) probabilities, or (N,).
        names: the K output names.
        thresholds: see :func:`evaluate_predictions` (choose them on validation data).
        patient_ids: (N,) patient ids (bootstrap unit), or None.
        paths: (N,) scan paths, the first CSV column (the key ``chestxr.compare`` joins on).
        extra_columns: more per-scan columns for the CSV, e.g. ``{"sex": [...], "view": [...]}``.
        subgroups: names of ``extra_columns`` to break the metrics down by.
        n_bootstrap: resamples per interval (0: no intervals, no ROC band).
        seed: bootstrap seed.
        threshold_rule: recorded with the thresholds, see :func:`evaluate_predictions`.
        title: heading of ``summary.html``.
        class_names: ``[negative, positive]`` labels of the confusion matrix (K = 1 only);
            default ``["not <name>", "<name>"]``.
        min_group_size: subgroups with fewer labelled scans are flagged.

    Returns:
        The metrics dictionary written to ``metrics.json``.

    Raises:
        FileNotFoundError: ``out_dir`` does not exist.
        FileExistsError: ``out_dir/metrics.json`` exists already.
        ValueError: inconsistent lengths, unknown subgroup columns or clashing column names.
    """
    out = Path(out_dir)
    if not out.is_dir():
        raise FileNotFoundError(f"evaluation output folder {out} does not exist")
    metrics_path = out / "metrics.json"
    if metrics_path.exists():
        raise FileExistsError(f"refusing to overwrite existing {metrics_path}")

    yt, yp = as_2d(y_true, "y_true"), as_2d(y_prob, "y_prob")
    n, k = yt.shape
    names = check_names(names, k)
    paths = [str(p) for p in paths]
    if len(paths) != n:
        raise ValueError(f"got {len(paths)} paths for {n} scans")
    extra = dict(extra_columns or {})
    for column, values in extra.items():
        if len(values) != n:
            raise ValueError(f"extra column {column!r} has {len(values)} values for {n} scans")
    reserved = set(_CORE_COLUMNS) | {f"{p}_{x}" for x in names for p in ("label", "prob", "pred")}
    clash = sorted(reserved & set(extra))
    if clash:
        raise ValueError(f"extra_columns {clash} clash with the standard prediction columns")
    unknown = [c for c in subgroups or [] if c not in extra]
    if unknown:
        raise ValueError(f"subgroup columns {unknown} are not in extra_columns {list(extra)}")
    if class_names is not None and (k != 1 or len(class_names) != 2):
        raise ValueError(f"class_names {class_names!r} needs exactly 2 names and a single output")

    metrics = evaluate_predictions(
        yt,
        yp,
        names,
        thresholds,
        patient_ids=patient_ids,
        n_bootstrap=n_bootstrap,
        seed=seed,
        subgroups={c: extra[c] for c in subgroups or []},
        min_group_size=min_group_size,
        threshold_rule=threshold_rule,
    )
    thr = {name: metrics["outputs"][name]["threshold"] for name in names}
    pids = None if patient_ids is None else np.asarray(patient_ids).astype(str)
    _write_predictions_csv(out / "predictions.csv", paths, pids, names, yt, yp, thr, extra)

    curves = [(name, yt[:, j], yp[:, j]) for j, name in enumerate(names)]
    images = []
    if k == 1:
        band = None
        labels = yt[:, 0][~np.isnan(yt[:, 0])]
        if n_bootstrap > 0 and 0 < labels.sum() < labels.size:
            band = {names[0]: roc_band(yt[:, 0], yp[:, 0], pids, n_bootstrap, seed, CONFIDENCE)}
        images.append(plot_roc(out / "roc.png", curves, band=band, operating_points=thr))
    else:
        images.append(plot_roc(out / "roc.png", curves))
    images.append(plot_pr(out / "pr.png", curves, operating_points=thr))
    images.append(plot_reliability(out / "reliability.png", curves))
    for j, name in enumerate(names):
        suffix = "" if k == 1 else f"_{safe_name(name)}"
        if k > 1:
            images.append(
                plot_roc(
                    out / f"roc{suffix}.png",
                    [curves[j]],
                    operating_points=thr,
                    title=f"ROC: {name}",
                )
            )
        cls = list(class_names) if class_names else [f"not {name}", name]
        images.append(
            plot_confusion_matrix(
                out / f"confusion_matrix{suffix}.png",
                metrics["outputs"][name]["metrics"]["confusion_matrix"],
                cls,
                title=f"Confusion matrix: {name} (t = {thr[name]:.3g})",
            )
        )
    atomic_write_text(out / "summary.html", render_summary(metrics, images, title), overwrite=True)
    atomic_write_json(metrics_path, metrics, overwrite=False)
    log.info("wrote evaluation of %d scans, %d outputs to %s", n, k, out)
    return metrics


def read_predictions(path: str | os.PathLike) -> dict:
    """Read a ``predictions.csv`` written by :func:`write_evaluation`.

    Args:
        path: the CSV file.

    Returns:
        ``{"paths": list[str], "patient_ids": list[str], "names": list[str],
        "y_true": (N, K) float array with NaN, "y_prob": (N, K) float array,
        "extra": {column: list[str]}}``.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: required columns are missing or a value does not parse.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file {path} does not exist")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        rows = list(reader)
    names = [c[len("prob_") :] for c in header if c.startswith("prob_")]
    missing = [c for c in (*_CORE_COLUMNS, *(f"label_{n}" for n in names)) if c not in header]
    if missing or not names:
        raise ValueError(f"{path} lacks columns {missing or ['prob_<name>']}; header {header}")
    standard = set(_CORE_COLUMNS) | {f"{p}_{n}" for n in names for p in ("label", "prob", "pred")}
    try:
        y_true = np.array(
            [
                [float(r[f"label_{n}"]) if r[f"label_{n}"] != "" else np.nan for n in names]
                for r in rows
            ],
            dtype=np.float64,
        ).reshape(len(rows), len(names))
        y_prob = np.array(
            [[float(r[f"prob_{n}"]) for n in names] for r in rows], dtype=np.float64
        ).reshape(len(rows), len(names))
    except ValueError as err:
        raise ValueError(f"{path}: unparsable label or probability ({err})") from err
    return {
        "paths": [r["path"] for r in rows],
        "patient_ids": [r["patient_id"] for r in rows],
        "names": names,
        "y_true": y_true,
        "y_prob": y_prob,
        "extra": {c: [r[c] for r in rows] for c in header if c not in standard},
    }
