"""Compare two models' ROC AUC on the same scans: ``python -m chestxr.compare a=A.csv b=B.csv``.

Writes ``comparison.json`` (paired patient bootstrap of delta AUC = A - B, and the DeLong test)
from :func:`chestxr.evaluation.comparison.compare_predictions`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from chestxr.evaluation.comparison import compare_predictions
from chestxr.utils.files import atomic_write_json
from chestxr.utils.jsonable import to_jsonable

log = logging.getLogger(__name__)


def compare(cfg: DictConfig) -> dict:
    """Compare ``cfg.a`` with ``cfg.b`` and write ``<cfg.out>/comparison.json``.

    Raises:
        ValueError: see :func:`compare_predictions`.
        FileExistsError: ``comparison.json`` exists in ``cfg.out``.
    """
    report = to_jsonable(
        compare_predictions(
            cfg.a,
            cfg.b,
            cfg.output,
            n_bootstrap=int(cfg.n_bootstrap),
            seed=int(cfg.seed),
            confidence=float(cfg.confidence),
        )
    )
    atomic_write_json(Path(cfg.out) / "comparison.json", report, overwrite=False)
    delong = report["delong"]
    log.info(
        "%s: AUC A %.4f, B %.4f, delta %+.4f (%d%% CI %s), bootstrap p = %.4g; DeLong p = %s",
        report["output"],
        report["auc_a"],
        report["auc_b"],
        report["delta"],
        round(100 * report["confidence"]),
        report["ci"],
        report["p_value"],
        delong["reason"] if delong["p_value"] is None else f"{delong['p_value']:.4g}",
    )
    return report


@hydra.main(version_base="1.3", config_path="../conf", config_name="compare")
def main(cfg: DictConfig) -> None:
    """Hydra entry point around :func:`compare`."""
    compare(cfg)


if __name__ == "__main__":
    main()
