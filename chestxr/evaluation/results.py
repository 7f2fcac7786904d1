"""The ``metrics.json`` content of one evaluation: computed here, written by ``artefacts``.

:func:`evaluate_predictions` turns labels and probabilities into the metrics dictionary (schema
below, its metric list generated from the registry :data:`binary_metrics.METRICS`). Undefined
numbers are ``null`` (never NaN) and an ``undefined`` entry beside them says why. Labels are NaN
where unknown and those rows are left out of that output's metrics. Macro values average the
outputs where the metric is defined; their intervals come from a joint bootstrap (the same
patients drawn for every output).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np

from chestxr.evaluation._arrays import as_2d
from chestxr.evaluation.binary_metrics import (
    MACRO_METRICS,
    METRIC_BY_NAME,
    SCALAR_METRICS,
    BinaryMetrics,
    binary_metrics,
    schema_text,
    weighted_binary_metrics,
)
from chestxr.evaluation.bootstrap import (
    cluster_bootstrap,
    cluster_codes,
    percentile_interval,
    resample_weights,
)
from chestxr.evaluation.operating_point import choose_threshold
from chestxr.utils.jsonable import to_jsonable

log = logging.getLogger(__name__)

SCHEMA = "chestxr.metrics/1"
CONFIDENCE = 0.95
MISSING_GROUP = "<missing>"


def schema_description() -> str:
    """The ``metrics.json`` schema as text, its metric list derived from the registry."""
    return f"""metrics.json schema (``"schema": "{SCHEMA}"``)::

    {{
      "schema": "{SCHEMA}",
      "n_scans": int, "n_patients": int | null,
      "outputs": {{
        NAME: {{
          "threshold": float,                  # predict positive when prob >= threshold
          "threshold_rule": {{"rule": ..., ...}},  # how the threshold was chosen (as given);
                        # a seed ensemble or TTA adds "members" [{{"path", "sha256"}}], "tta_views"
          "metrics": {{METRIC: float | null,    # METRIC: see the list below
                      "confusion_matrix": [[tn, fp], [fn, tp]],
                      "n", "n_positive", "n_negative": int, "threshold": float,
                      "undefined": {{METRIC: reason}}}},   # why each null metric is null
          "ci95": {{METRIC: [low, high] | [null, null]}},   # {{}} when n_resamples == 0
          "n_patients": int | null
        }}
      }},
      "macro": {{MACRO_METRIC: float | null, "ci95": {{MACRO_METRIC: [l, h]}},  # only when K > 1
                "n_outputs": K, "undefined": {{MACRO_METRIC: reason}}}},
      "subgroups": {{COLUMN: {{VALUE: {{NAME: {{"metrics": {{...}}, "ci95": {{...}}, "n": int,
                                            "n_patients": int | null, "warning": str | null}}}}}}}},
      "bootstrap": {{"n_resamples": int, "seed": int, "unit": "patient" | "scan",
                    "confidence": {CONFIDENCE}, "method": "percentile"}}
    }}

METRIC (MACRO_METRIC: {", ".join(MACRO_METRICS)}):

{schema_text()}
"""


def check_names(names: Sequence[str], k: int) -> list[str]:
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
    point: dict = {}
    undefined = {}
    for m in MACRO_METRICS:
        vals = [outputs[n]["metrics"][m] for n in names if outputs[n]["metrics"][m] is not None]
        point[m] = float(np.mean(vals)) if vals else None
        if not vals:
            undefined[m] = f"undefined for every output ({METRIC_BY_NAME[m].undefined})"
    ci: dict[str, list] = {}
    if n_bootstrap >= 1:
        codes, n_clusters = cluster_codes(patient_ids, yt.shape[0])
        samples: dict[str, list[np.ndarray]] = {m: [] for m in MACRO_METRICS}
        for weights in resample_weights(codes, n_clusters, n_bootstrap, seed):
            per_output = {m: [] for m in MACRO_METRICS}
            for k, n in enumerate(names):
                keep = ~np.isnan(yt[:, k])
                if not keep.any():
                    continue
                res = weighted_binary_metrics(
                    yt[keep, k], yp[keep, k], outputs[n]["threshold"], weights[:, keep]
                )
                for m in MACRO_METRICS:
                    per_output[m].append(res[m])
            for m in MACRO_METRICS:
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
            for m in MACRO_METRICS
        }
    return {**point, "ci95": ci, "n_outputs": len(names), "undefined": undefined}


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
    names = check_names(names, k)
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


__doc__ = f"{__doc__}\n{schema_description()}"
