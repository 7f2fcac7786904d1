"""``python -m chestxr.evaluate ckpt_path=PATH [data=...]``: metrics on held-out scans."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from chestxr.data.datamodule import RadiographDataModule
from chestxr.evaluation.calibration import apply_temperature, fit_temperature, logit
from chestxr.evaluation.operating_point import choose_threshold
from chestxr.evaluation.outputs import write_evaluation
from chestxr.inference import load_model, predict_dataset
from chestxr.models.module import ChestXRClassifier
from chestxr.utils.files import ensure_fresh_run_dir

log = logging.getLogger(__name__)


def data_for_model(data_cfg: DictConfig, model: ChestXRClassifier) -> RadiographDataModule:
    """The configured data, read with the preprocessing the model was trained with."""
    trained = dict(model.hparams.preprocess)
    if dict(data_cfg.get("preprocess", {})) != trained:
        log.info("using the checkpoint's preprocessing %s", trained)
    dm = instantiate(
        data_cfg, preprocess=trained, task=model.hparams.task, classes=list(model.hparams.classes)
    )
    return dm


def fit_thresholds(
    model: ChestXRClassifier, dm: RadiographDataModule, batch_size: int = 64
) -> np.ndarray:
    """Choose each output's decision threshold on the validation split and store it in the model."""
    rule = dict(model.hparams.operating_point or {"rule": "youden"})
    val = predict_dataset(model, dm.dataset("val", train=False), batch_size=batch_size)
    thresholds = np.array(
        [
            choose_threshold(
                val["target"][:, k],
                val["prob"][:, k],
                rule.get("rule", "youden"),
                rule.get("target"),
            )
            for k in range(val["prob"].shape[1])
        ],
        dtype=np.float32,
    )
    model.thresholds.copy_(torch.as_tensor(thresholds))
    log.info("operating point (%s on validation): %s", rule, thresholds.tolist())
    return thresholds


def evaluate_model(
    model: ChestXRClassifier,
    dm: RadiographDataModule,
    out_dir: Path,
    cfg: DictConfig | dict[str, Any],
    split: str = "test",
) -> dict[str, Any]:
    """Predict a split and write predictions, metrics, plots and a summary into ``out_dir``.

    The decision thresholds are the model's (chosen on validation after training) or, for a
    checkpoint without them, chosen on validation now; with ``temperature_scaling`` a temperature
    fitted on the validation logits calibrates the probabilities (thresholds mapped with them,
    so decisions are unchanged). Nothing is ever tuned on the evaluated split.
    """
    batch_size = cfg.get("batch_size", 64)
    thresholds = model.thresholds.cpu().numpy()
    if np.isnan(thresholds).any():
        thresholds = fit_thresholds(model, dm, batch_size)
    rule = {**dict(model.hparams.operating_point or {}), "chosen_on": "validation"}
    res = predict_dataset(model, dm.dataset(split, train=False), batch_size=batch_size)
    prob = res["prob"]
    if cfg.get("temperature_scaling"):
        val = predict_dataset(model, dm.dataset("val", train=False), batch_size=batch_size)
        temperature = fit_temperature(val["logit"], val["target"])
        prob = apply_temperature(res["logit"], temperature)
        thresholds = apply_temperature(logit(np.clip(thresholds, 1e-7, 1 - 1e-7)), temperature)
        rule["temperature"] = float(temperature)
        log.info("temperature scaling: T = %.3f (fitted on validation)", temperature)
    manifest = dm.load()
    wanted = list(cfg.get("subgroups", []))
    missing = [c for c in wanted if c not in manifest.columns]
    if missing:
        raise KeyError(
            f"evaluation.subgroups names column(s) {missing} absent from {manifest.source}; "
            f"its columns are {sorted(manifest.columns)}"
        )
    extra = {c: manifest.columns[c][res["index"]] for c in wanted}
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = write_evaluation(
        out_dir,
        y_true=res["target"],
        y_prob=prob,
        names=model.output_names,
        thresholds=np.asarray(thresholds, dtype=np.float64),
        patient_ids=res["patient_id"],
        paths=res["path"],
        extra_columns=extra,
        subgroups=wanted,
        n_bootstrap=cfg.get("n_bootstrap", 1000),
        seed=cfg.get("seed", 0),
        threshold_rule=rule,
        class_names=list(model.hparams.classes) if model.hparams.task == "binary" else None,
        min_group_size=cfg.get("min_group_size", 30),
    )
    for name, m in metrics["outputs"].items():
        log.info(
            "%s %s: AUC %s, sensitivity %s, specificity %s",
            split,
            name,
            m["metrics"].get("roc_auc"),
            m["metrics"].get("sensitivity"),
            m["metrics"].get("specificity"),
        )
    log.info("evaluation written to %s", out_dir)
    return metrics


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` on the data config's ``cfg.split`` split."""
    out_dir = ensure_fresh_run_dir(cfg.paths.output_dir)
    model = load_model(cfg.ckpt_path)
    dm = data_for_model(cfg.data, model)
    return evaluate_model(model, dm, out_dir, cfg.evaluation, split=cfg.split)


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
