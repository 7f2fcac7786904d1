"""``python -m chestxr.pretrain``: self-supervised pretraining on scans without labels.

A thin Hydra wrapper: the data module of ``conf/data`` (labels not read), SimCLR
(:mod:`chestxr.models.ssl`), and the backbone written as ``<run>/checkpoints/backbone.ckpt``, a
chestxr checkpoint that ``python -m chestxr.train model.init_checkpoint=PATH`` fine-tunes from.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from chestxr.models.ssl import write_backbone_checkpoint
from chestxr.utils.files import ensure_fresh_run_dir
from chestxr.utils.hardware import resolve_precision

log = logging.getLogger(__name__)


def pretrain(cfg: DictConfig) -> tuple[Path, dict[str, Any]]:
    """Pretrain on the train split of ``cfg.data`` and write the backbone checkpoint.

    Returns:
        The backbone checkpoint's path, and the objects built (datamodule, model, trainer).
    """
    out_dir = Path(cfg.paths.output_dir)
    if cfg.get("ckpt_path"):  # resume only into the checkpoint's own run folder or a new one
        from chestxr.training import check_resume_target

        check_resume_target(cfg.ckpt_path, out_dir)
    else:
        ensure_fresh_run_dir(out_dir)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    groups = [cfg.get("callbacks") or {}, cfg.get("logger") or {}]
    callbacks, loggers = ([instantiate(c) for c in g.values() if c] for g in groups)
    precision = resolve_precision(cfg.trainer.get("precision"), cfg.trainer.get("accelerator"))
    trainer: L.Trainer = instantiate(
        cfg.trainer, precision=precision, callbacks=callbacks, logger=loggers
    )
    loader = datamodule.train_dataloader()
    rows = datamodule.rows("train")
    m = datamodule.load()
    log.info("pretraining on %d scans of %s (%s)", len(rows), m.source, precision)
    trainer.fit(model, train_dataloaders=loader, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    loss = trainer.callback_metrics.get("train/loss_epoch")
    info = {
        "data": {
            "manifest": str(m.source),
            "split": "train",
            "scans": len(rows),
            "patients": len(set(m.patient_ids[rows].tolist())),
        },
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "final_loss": None if loss is None else float(loss),
    }
    path = out_dir / "checkpoints" / "backbone.ckpt"
    if trainer.is_global_zero:
        write_backbone_checkpoint(model, path, info)
        log.info("pretrained backbone: %s (fine-tune: model.init_checkpoint=%s)", path, path)
    return path, {"datamodule": datamodule, "model": model, "trainer": trainer}


@hydra.main(version_base="1.3", config_path="../conf", config_name="pretrain")
def main(cfg: DictConfig) -> None:
    pretrain(cfg)


if __name__ == "__main__":
    main()
