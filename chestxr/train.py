"""``python -m chestxr.train`` (``chestxr-train``): fine-tune, test the best checkpoint, report.

A thin Hydra wrapper around :func:`chestxr.training.train`; every choice lives in ``conf/``.
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig, OmegaConf

from chestxr.training import train
from chestxr.utils.instantiate import instantiate_group

__all__ = ["instantiate_group", "main", "train"]
log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Train with the composed config; returns the validation AUC (for sweepers)."""
    log.debug("config:\n%s", OmegaConf.to_yaml(cfg))
    metrics, _ = train(cfg)
    name = cfg.get("optimized_metric")  # set by conf/hparams_search
    if name and name not in metrics:
        raise KeyError(f"optimized_metric {name!r} not among the run's metrics {sorted(metrics)}")
    value = metrics.get(name or "val/auc")
    return float(value) if value is not None else None


if __name__ == "__main__":
    main()
