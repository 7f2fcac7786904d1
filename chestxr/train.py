"""``python -m chestxr.train``: fine-tune, test the best checkpoint, evaluate and report.

A thin Hydra wrapper around :func:`train`; every choice lives in ``conf/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from chestxr import __version__
from chestxr.utils.files import ensure_fresh_run_dir
from chestxr.utils.hardware import resolve_precision

log = logging.getLogger(__name__)


def instantiate_group(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a config group (callbacks, loggers) that has a ``_target_``."""
    if not cfg:
        return []
    return [instantiate(c) for c in cfg.values() if isinstance(c, DictConfig) and "_target_" in c]


def run_summary(cfg: DictConfig, trainer: L.Trainer, datamodule: Any) -> dict[str, Any]:
    """What a model card says about the run: data, validation score, config hash, version."""
    m = datamodule.load()
    data = {"manifest": str(m.source), "outputs": m.output_names, "splits": {}}
    for split in ("train", "val", "test"):
        rows = datamodule.rows(split)
        t = m.targets[rows]
        data["splits"][split] = {
            "scans": len(rows),
            "patients": len(set(m.patient_ids[rows].tolist())),
            "positives": dict(
                zip(m.output_names, np.nansum(t, axis=0).astype(int).tolist(), strict=True)
            ),
        }
    score = trainer.checkpoint_callback.best_model_score
    # the settings that define the run, resolved with placeholder paths (so the hash names the
    # configuration, not where it ran); Hydra's own settings left out
    c = cfg.copy()
    with open_dict(c):
        for key in c.paths:
            c.paths[key] = f"<paths.{key}>"
    settings = {
        k: OmegaConf.to_container(c[k], resolve=True) if OmegaConf.is_config(c[k]) else c[k]
        for k in c
        if k not in ("paths", "hydra")
    }
    text = json.dumps(settings, sort_keys=True, default=str)
    return {
        "chestxr_version": __version__,
        "data": data,
        "validation": {
            "monitor": trainer.checkpoint_callback.monitor,
            "best": None if score is None else float(score),
        },
        "config_hash": hashlib.sha256(text.encode()).hexdigest()[:16],
    }


@rank_zero_only
def finish(cfg: DictConfig, trainer: L.Trainer, datamodule: Any, out_dir: Path) -> dict[str, Any]:
    """Store the validation operating point in the best checkpoint, then evaluate and report."""
    from chestxr.evaluate import evaluate_model, fit_thresholds
    from chestxr.inference import load_model

    best = (
        trainer.checkpoint_callback.best_model_path or trainer.checkpoint_callback.last_model_path
    )
    model = load_model(best)
    fit_thresholds(model, datamodule, cfg.evaluation.get("batch_size", 64))
    final = out_dir / "checkpoints" / "model.ckpt"
    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    ckpt["state_dict"] = {k: v.cpu() for k, v in model.state_dict().items()}
    ckpt["chestxr"] = run_summary(cfg, trainer, datamodule)
    torch.save(ckpt, final)
    log.info("final model (best on validation, with its operating point): %s", final)
    metrics = evaluate_model(model, datamodule, out_dir / "evaluation", cfg.evaluation)
    if cfg.get("make_report"):
        from chestxr.report import report_model

        report_model(model, datamodule, out_dir / "report", cfg.report)
    return metrics


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit the model on the train split, select on validation, then test and report.

    Returns:
        The metrics logged by the trainer (and the evaluation's when run), and the objects built.
    """
    out_dir = Path(cfg.paths.output_dir)
    if rank_zero_only.rank == 0 and not cfg.get("ckpt_path"):
        ensure_fresh_run_dir(out_dir)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    precision = resolve_precision(cfg.trainer.get("precision"), cfg.trainer.get("accelerator"))
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        precision=precision,
        callbacks=instantiate_group(cfg.get("callbacks")),
        logger=instantiate_group(cfg.get("logger")),
    )
    log.info("training %s on %s (%s)", model.output_names, cfg.data.get("manifest"), precision)
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    metrics: dict[str, Any] = dict(trainer.callback_metrics)

    if cfg.get("test"):
        trainer.test(model, datamodule=datamodule, ckpt_path="best", weights_only=True)
        metrics.update(trainer.callback_metrics)
        evaluation = finish(cfg, trainer, datamodule, out_dir)
        if evaluation:
            metrics["evaluation"] = evaluation
    log.info("run folder: %s", out_dir.resolve())
    return metrics, {"datamodule": datamodule, "model": model, "trainer": trainer}


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    log.debug("config:\n%s", OmegaConf.to_yaml(cfg))
    metrics, _ = train(cfg)
    value = metrics.get("val/auc")
    return float(value) if value is not None else None


if __name__ == "__main__":
    main()
