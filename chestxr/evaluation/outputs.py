"""Evaluation outputs: the metrics dictionary, and the files of one evaluation run.

:func:`evaluate_predictions` turns labels and probabilities into the ``metrics.json`` content;
:func:`write_evaluation` writes every artefact of a run into a folder; :func:`read_predictions`
reads a ``predictions.csv`` back (used by ``python -m chestxr.compare``).

metrics.json schema (``"schema": "chestxr.metrics/1"``)::

    {
      "schema": "chestxr.metrics/1",
      "n_scans": int, "n_patients": int | null,
      "outputs": {
        NAME: {
          "threshold": float,                  # predict positive when prob >= threshold
          "threshold_rule": {"rule": ..., ...},  # how the threshold was chosen (as given)
          "metrics": {"roc_auc", "average_precision", "sensitivity", "specificity", "ppv",
                      "npv", "f1", "accuracy", "brier", "ece": float | null,
                      "confusion_matrix": [[tn, fp], [fn, tp]],
                      "n", "n_positive", "n_negative": int, "threshold": float},
          "ci95": {METRIC: [low, high] | [null, null]},   # {} when n_resamples == 0
          "n_patients": int | null
        }
      },
      "macro": {"roc_auc": float | null, "average_precision": float | null,   # only when K > 1
                "ci95": {"roc_auc": [l, h], "average_precision": [l, h]}, "n_outputs": K},
      "subgroups": {COLUMN: {VALUE: {NAME: {"metrics": {...}, "ci95": {...}, "n": int,
                                            "n_patients": int | null, "warning": str | null}}}},
      "bootstrap": {"n_resamples": int, "seed": int, "unit": "patient" | "scan",
                    "confidence": 0.95, "method": "percentile"}
    }

Undefined numbers are ``null`` (never NaN). Labels are NaN where unknown and those rows are left
out of that output's metrics. Macro values average the outputs where the metric is defined; their
intervals come from a joint bootstrap (the same patients drawn for every output).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from chestxr.evaluation._arrays import as_2d, none_if_nan
from chestxr.evaluation._report import render_summary
from chestxr.evaluation.bootstrap import (
    cluster_bootstrap,
    cluster_codes,
    percentile_interval,
    resample_weights,
    roc_band,
)
from chestxr.evaluation.metrics import (
    SCALAR_METRICS,
    BinaryMetrics,
    binary_metrics,
    weighted_binary_metrics,
)
from chestxr.evaluation.operating_point import choose_threshold
from chestxr.evaluation.plots import plot_confusion_matrix, plot_pr, plot_reliability, plot_roc
from chestxr.utils.files import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

SCHEMA = "chestxr.metrics/1"
CONFIDENCE = 0.95
MISSING_GROUP = "<missing>"
_MACRO_METRICS = ("roc_auc", "average_precision")
_CORE_COLUMNS = ("path", "patient_id")


def to_jsonable(obj: object) -> object:
    """Convert numpy scalars/arrays, tuples and NaN/inf to plain JSON values (NaN -> None)."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return none_if_nan(obj)
    return obj


def _check_names(names: Sequence[str], k: int) -> list[str]:
    names = [str(n) for n in names]
    if len(names) != k:
        raise ValueError(f"got {len(names)} names {names} for {k} outputs")
    if len(set(names)) != len(names) or any(not n for n in names):
        raise ValueError(f"output names must be unique and non-empty, got {names}")
    return names


def _resolve_thresholds(
    thresholds: Mapping[str, float] | Sequence[float] | float | None,
    names: list[str],
    yt: np.ndarray,
    yp: np.ndarray,
    threshold_rule: Mapping | None,
) -> tuple[dict[str, float], dict[str, dict]]:
    """Thresholds and the rule recorded for each output (see :func:`evaluate_predictions`)."""
    if threshold_rule is not None and set(threshold_rule) == set(names):
        rules = {n: dict(threshold_rule[n]) for n in names}
    else:
        rules = {n: dict(threshold_rule or {"rule": "given"}) for n in names}
    if thresholds is None:
        out = {}
        for k, n in enumerate(names):
            rule = rules[n].get("rule", "youden")
            rule = "youden" if rule == "given" else rule
            out[n] = choose_threshold(yt[:, k], yp[:, k], rule, rules[n].get("target"))
            rules[n] = {**rules[n], "rule": rule, "chosen_on": "evaluation data (optimistic)"}
        log.warning("thresholds chosen on the evaluated data itself: operating metrics optimistic")
        return out, rules
    if isinstance(thresholds, Mapping):
        missing = [n for n in names if n not in thresholds]
        if missing:
            raise ValueError(f"thresholds lack outputs {missing}; got keys {list(thresholds)}")
        values = [thresholds[n] for n in names]
    elif np.ndim(thresholds) == 0:
        values = [thresholds] * len(names)
    else:
        values = list(thresholds)
        if len(values) != len(names):
            raise ValueError(f"got {len(values)} thresholds for {len(names)} outputs {names}")
    out = {}
    for n, t in zip(names, values, strict=True):
        if not (isinstance(t, (int, float, np.number)) and math.isfinite(t)):
            raise ValueError(f"threshold of {n!r} must be a finite number, got {t!r}")
        out[n] = float(t)
    return out, rules


def _n_patients(patient_ids: np.ndarray | None, rows: np.ndarray) -> int | None:
    return None if patient_ids is None else int(np.unique(patient_ids[rows]).size)


def _ci(
    yt: np.ndarray,
    yp: np.ndarray,
    threshold: float,
    groups: np.ndarray | None,
    n_bootstrap: int,
    seed: int,
) -> dict[str, list]:
    if n_bootstrap < 1 or np.isnan(yt).all():
        return {}
    ci = cluster_bootstrap(BinaryMetrics(threshold), yt, yp, groups, n_bootstrap, seed, CONFIDENCE)
    return {k: list(ci[k]) for k in SCALAR_METRICS if k in ci}


def _macro(
    yt: np.ndarray,
    yp: np.ndarray,
    names: list[str],
    outputs: dict,
    patient_ids: np.ndarray | None,
    n_bootstrap: int,
    seed: int,
) -> dict:
    """Macro averages over outputs and their joint-bootstrap intervals."""
    point = {}
    for m in _MACRO_METRICS:
        vals = [outputs[n]["metrics"][m] for n in names if outputs[n]["metrics"][m] is not None]
        point[m] = float(np.mean(vals)) if vals else None
    ci: dict[str, list] = {}
    if n_bootstrap >= 1:
        codes, n_clusters = cluster_codes(patient_ids, yt.shape[0])
        samples: dict[str, list[np.ndarray]] = {m: [] for m in _MACRO_METRICS}
        for weights in resample_weights(codes, n_clusters, n_bootstrap, seed):
            per_output = {m: [] for m in _MACRO_METRICS}
            for k, n in enumerate(names):
                keep = ~np.isnan(yt[:, k])
                if not keep.any():
                    continue
                res = weighted_binary_metrics(
                    yt[keep, k], yp[keep, k], outputs[n]["threshold"], weights[:, keep]
                )
                for m in _MACRO_METRICS:
                    per_output[m].append(res[m])
            for m in _MACRO_METRICS:
                if not per_output[m]:
                    samples[m].append(np.full(len(weights), np.nan))
                    continue
                stacked = np.stack(per_output[m])
                finite = np.isfinite(stacked)
                count = finite.sum(axis=0)
                total = np.where(finite, stacked, 0.0).sum(axis=0)
                samples[m].append(np.where(count > 0, total / np.maximum(count, 1), np.nan))
        ci = {
            m: list(percentile_interval(np.concatenate(samples[m]), CONFIDENCE, f"macro {m}"))
            for m in _MACRO_METRICS
        }
    return {**point, "ci95": ci, "n_outputs": len(names)}


def _group_keys(values: Sequence | np.ndarray, n: int, column: str) -> np.ndarray:
    arr = np.asarray(values, dtype=object)
    if arr.shape != (n,):
        raise ValueError(f"subgroup column {column!r} has shape {arr.shape}, expected ({n},)")

    def key(v: object) -> str:
        if v is None or (isinstance(v, (float, np.floating)) and math.isnan(v)) or v == "":
            return MISSING_GROUP
        return str(v)

    return np.array([key(v) for v in arr], dtype=object)


def evaluate_predictions(
    y_true: Sequence | np.ndarray,
    y_prob: Sequence | np.ndarray,
    names: Sequence[str],
    thresholds: Mapping[str, float] | Sequence[float] | float | None,
    *,
    patient_ids: Sequence | np.ndarray | None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    subgroups: Mapping[str, Sequence | np.ndarray] | None = None,
    min_group_size: int = 30,
    threshold_rule: Mapping | None = None,
) -> dict:
    """Compute the ``metrics.json`` content (schema in the module docstring).

    Args:
        y_true: (N, K) labels 0/1 with NaN where unknown, or (N,) for K = 1.
        y_prob: (N, K) probabilities, or (N,).
        names: the K output names (binary task: the positive class).
        thresholds: ``{name: t}``, a sequence of K values, one value for all outputs, or None to
            choose them on these data by ``threshold_rule`` (default Youden; logged as optimistic).
        patient_ids: (N,) patient ids, the bootstrap unit; None bootstraps scans.
        n_bootstrap: resamples per interval; 0 skips the intervals.
        seed: bootstrap seed (one numpy Generator per interval, seeded with it).
        subgroups: ``{column: (N,) values}``; metrics per distinct value (None/NaN/"" ->
            ``"<missing>"``), at the overall thresholds.
        min_group_size: subgroups with fewer labelled scans get a warning.
        threshold_rule: how the thresholds were chosen, recorded per output, e.g.
            ``{"rule": "youden", "target": None, "chosen_on": "validation"}``; either one dict for
            all outputs or ``{name: dict}``.

    Returns:
        The metrics dictionary (JSON-ready: NaN replaced by None).

    Raises:
        ValueError: inconsistent shapes, names or thresholds, or invalid labels/probabilities.
    """
    yt, yp = as_2d(y_true, "y_true"), as_2d(y_prob, "y_prob")
    if yt.shape != yp.shape:
        raise ValueError(f"y_true {yt.shape} and y_prob {yp.shape} differ in shape")
    n, k = yt.shape
    names = _check_names(names, k)
    pids = None
    if patient_ids is not None:
        pids = np.asarray(patient_ids).astype(str)
        if pids.shape != (n,):
            raise ValueError(f"patient_ids has shape {pids.shape}, expected ({n},)")
    else:
        log.warning("no patient ids: bootstrap resamples scans, intervals may be too narrow")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    thr, rules = _resolve_thresholds(thresholds, names, yt, yp, threshold_rule)

    outputs = {}
    for j, name in enumerate(names):
        labelled = ~np.isnan(yt[:, j])
        outputs[name] = {
            "threshold": thr[name],
            "threshold_rule": rules[name],
            "metrics": binary_metrics(yt[:, j], yp[:, j], thr[name]),
            "ci95": _ci(yt[:, j], yp[:, j], thr[name], pids, n_bootstrap, seed),
            "n_patients": _n_patients(pids, labelled),
        }
    result: dict = {
        "schema": SCHEMA,
        "n_scans": n,
        "n_patients": None if pids is None else int(np.unique(pids).size),
        "outputs": outputs,
    }
    if k > 1:
        result["macro"] = _macro(yt, yp, names, outputs, pids, n_bootstrap, seed)

    result["subgroups"] = {}
    for column, values in (subgroups or {}).items():
        keys = _group_keys(values, n, column)
        table = {}
        for value in sorted(set(keys.tolist())):
            rows = keys == value
            per_output = {}
            for j, name in enumerate(names):
                sub_t, sub_p = yt[rows, j], yp[rows, j]
                m = binary_metrics(sub_t, sub_p, thr[name])
                warnings = []
                if m["n"] < min_group_size:
                    warnings.append(
                        f"only {m['n']} labelled scans (< {min_group_size}): estimates unreliable"
                    )
                if m["n"] and (m["n_positive"] == 0 or m["n_negative"] == 0):
                    missing = "positive" if m["n_positive"] == 0 else "negative"
                    warnings.append(f"no {missing} case: AUC undefined")
                per_output[name] = {
                    "metrics": m,
                    "ci95": _ci(
                        sub_t,
                        sub_p,
                        thr[name],
                        None if pids is None else pids[rows],
                        n_bootstrap,
                        seed,
                    ),
                    "n": m["n"],
                    "n_patients": _n_patients(
                        None if pids is None else pids[rows], ~np.isnan(sub_t)
                    ),
                    "warning": "; ".join(warnings) or None,
                }
            table[value] = per_output
        result["subgroups"][str(column)] = table
    result["bootstrap"] = {
        "n_resamples": int(n_bootstrap),
        "seed": int(seed),
        "unit": "scan" if pids is None else "patient",
        "confidence": CONFIDENCE,
        "method": "percentile",
    }
    return to_jsonable(result)


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

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            for i, scan in enumerate(paths):
                row = [str(scan), "" if patient_ids is None else patient_ids[i]]
                for j, name in enumerate(names):
                    label = "" if np.isnan(yt[i, j]) else str(int(yt[i, j]))
                    pred = int(yp[i, j] >= thresholds[name])
                    row += [label, repr(float(yp[i, j])), str(pred)]
                row += [_cell(col[i]) for col in extra_columns.values()]
                writer.writerow(row)

    atomic_write(path, write, overwrite=True)


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
    ``metrics.json`` (schema in the module docstring).

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
    names = _check_names(names, k)
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
    text = json.dumps(metrics, indent=2, allow_nan=False)
    atomic_write_text(metrics_path, text + "\n", overwrite=False)
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
