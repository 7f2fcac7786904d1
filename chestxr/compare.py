"""Compare two models' ROC AUC on the same scans: ``python -m chestxr.compare a=A.csv b=B.csv``.

Reads two ``predictions.csv`` files (written by ``chestxr.evaluation.write_evaluation``), joins
them on ``path``, checks that they hold the same scans and labels, and writes
``comparison.json`` (paired patient bootstrap of delta AUC = A - B, and the DeLong test).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from chestxr.evaluation.bootstrap import paired_auc_difference
from chestxr.evaluation.outputs import read_predictions, to_jsonable
from chestxr.utils.files import atomic_write_text

log = logging.getLogger(__name__)

SCHEMA = "chestxr.comparison/1"


def _pick_output(names: list[str], wanted: str | None, source: str) -> str:
    if wanted is None:
        if len(names) != 1:
            raise ValueError(f"{source} has outputs {names}: choose one with output=NAME")
        return names[0]
    if wanted not in names:
        raise ValueError(f"output {wanted!r} not in {source}; its outputs are {names}")
    return wanted


def _describe(paths: list[str], limit: int = 5) -> str:
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(paths[:limit]) + more


def compare(cfg: DictConfig) -> dict:
    """Run the paired comparison described by ``cfg`` and write ``comparison.json``.

    Args:
        cfg: ``a``, ``b`` (prediction CSVs), ``output`` (name or None), ``n_bootstrap``,
            ``seed``, ``confidence`` and ``out`` (folder for ``comparison.json``).

    Returns:
        The comparison dictionary (also written to ``<out>/comparison.json``).

    Raises:
        ValueError: the files hold different scans, labels or patients, or the output is
            ambiguous or unknown.
        FileExistsError: ``comparison.json`` exists in ``out``.
    """
    pred_a, pred_b = read_predictions(cfg.a), read_predictions(cfg.b)
    name = _pick_output(pred_a["names"], cfg.output, str(cfg.a))
    _pick_output(pred_b["names"], name, str(cfg.b))
    ja, jb = pred_a["names"].index(name), pred_b["names"].index(name)

    rows_b = {p: i for i, p in enumerate(pred_b["paths"])}
    set_a = set(pred_a["paths"])
    if len(set_a) != len(pred_a["paths"]) or len(rows_b) != len(pred_b["paths"]):
        raise ValueError("a predictions file lists the same path twice; cannot join on path")
    only_a = [p for p in pred_a["paths"] if p not in rows_b]
    only_b = [p for p in pred_b["paths"] if p not in set_a]
    if only_a or only_b:
        raise ValueError(
            f"the files hold different scans: {len(only_a)} only in {cfg.a} "
            f"({_describe(only_a)}); {len(only_b)} only in {cfg.b} ({_describe(only_b)})"
        )
    order = np.array([rows_b[p] for p in pred_a["paths"]], dtype=np.int64)
    y_a = pred_a["y_true"][:, ja]
    y_b = pred_b["y_true"][order, jb]
    differ = ~((y_a == y_b) | (np.isnan(y_a) & np.isnan(y_b)))
    if differ.any():
        bad = [pred_a["paths"][i] for i in np.flatnonzero(differ)]
        raise ValueError(f"labels of {name!r} differ for {len(bad)} scans: {_describe(bad)}")
    pid_b = [pred_b["patient_ids"][i] for i in order]
    if pid_b != pred_a["patient_ids"]:
        raise ValueError("the two files assign different patient ids to the same scans")

    groups = pred_a["patient_ids"] if all(pred_a["patient_ids"]) else None
    if groups is None:
        log.warning("patient ids missing: bootstrapping scans instead of patients")
    result = paired_auc_difference(
        y_a,
        pred_a["y_prob"][:, ja],
        pred_b["y_prob"][order, jb],
        groups,
        n_resamples=int(cfg.n_bootstrap),
        seed=int(cfg.seed),
        confidence=float(cfg.confidence),
    )
    report = to_jsonable(
        {"schema": SCHEMA, "a": str(cfg.a), "b": str(cfg.b), "output": name, **result}
    )
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out / "comparison.json",
        json.dumps(report, indent=2, allow_nan=False) + "\n",
        overwrite=False,
    )
    log.info(
        "%s: AUC A %.4f, B %.4f, delta %+.4f (%d%% CI %s), bootstrap p = %.4g; DeLong p = %.4g",
        name,
        report["auc_a"],
        report["auc_b"],
        report["delta"],
        round(100 * report["confidence"]),
        report["ci"],
        report["p_value"],
        report["delong"]["p_value"],
    )
    return report


@hydra.main(version_base="1.3", config_path="../conf", config_name="compare")
def main(cfg: DictConfig) -> None:
    """Hydra entry point around :func:`compare`."""
    compare(cfg)


if __name__ == "__main__":
    main()
