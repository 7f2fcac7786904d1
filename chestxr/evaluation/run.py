"""Evaluate a trained model on a split of its data: thresholds, calibration, files.

The library behind ``python -m chestxr.evaluate`` and the end of ``python -m chestxr.train``:
:func:`validate_evaluation_config` checks before any training or inference that the evaluation
can run; :func:`load_for_evaluation` reads one checkpoint or a seed ensemble of several;
:func:`fit_thresholds` chooses the operating point on the validation split; :func:`evaluate_model`
predicts a split (with test-time augmentation when configured) and writes its files
(:mod:`chestxr.evaluation.artefacts`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from chestxr.data.datamodule import RadiographDataModule
from chestxr.evaluation.artefacts import write_evaluation
from chestxr.evaluation.calibration import fit_temperature, temperature_scale_probabilities
from chestxr.evaluation.ensemble import Ensemble, View, checkpoint_records, parse_views
from chestxr.evaluation.operating_point import check_rule, choose_threshold
from chestxr.inference import load_model, predict_dataset
from chestxr.models.module import ChestXRClassifier

log = logging.getLogger(__name__)

DEFAULT_RULE = {"rule": "youden", "target": None}

Scorer = ChestXRClassifier | Ensemble  # what evaluation scores: one model, or a mean of logits


class EvaluationSetupError(ValueError):
    """An evaluation that cannot run as configured; the message names the key, split or column."""


def tta_views(evaluation: Mapping[str, Any]) -> list[View]:
    """The test-time views of ``evaluation.tta`` (identity first), ``[]`` when it is off.

    Raises:
        EvaluationSetupError: see :func:`chestxr.evaluation.ensemble.parse_views`.
    """
    spec, presets = evaluation.get("tta"), evaluation.get("tta_presets")
    spec, presets = (
        OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for v in (spec, presets)
    )
    try:
        return parse_views(spec, presets)
    except ValueError as err:
        raise EvaluationSetupError(str(err)) from err


def load_for_evaluation(
    ckpt_path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    evaluation: Mapping[str, Any],
) -> Scorer:
    """The model ``evaluate`` scores: one checkpoint, or the seed ensemble of several.

    ``evaluation.tta`` is checked first (before any checkpoint is read). One checkpoint without
    TTA is the plain model, with its stored operating point; otherwise an :class:`Ensemble` of the
    checkpoints (mean logit over members and test-time views), its members recorded by path and
    sha256.

    Raises:
        EvaluationSetupError: a bad ``evaluation.tta``, no checkpoint, the same checkpoint twice
            (same file or same sha256), or members that differ in preprocessing, task, classes or
            operating-point rule (naming the checkpoint and the key).
        FileNotFoundError, ValueError: see :func:`chestxr.inference.load_model`.
    """
    views = tta_views(evaluation)
    if OmegaConf.is_config(ckpt_path):
        ckpt_path = OmegaConf.to_container(ckpt_path)
    paths = [ckpt_path] if isinstance(ckpt_path, str | os.PathLike) else list(ckpt_path)
    if not paths:
        raise EvaluationSetupError("ckpt_path is an empty list: give at least one checkpoint")
    try:
        records = checkpoint_records(paths)
    except ValueError as err:
        raise EvaluationSetupError(str(err)) from err
    members = [load_model(r["path"]) for r in records]
    if len(members) == 1 and not views:
        return members[0]
    try:
        return Ensemble(members, views, records)
    except ValueError as err:
        raise EvaluationSetupError(str(err)) from err


def with_tta(model: Scorer, views: Sequence[View]) -> Scorer:
    """``model`` scored over ``views``: unchanged when there are none."""
    if isinstance(model, Ensemble):
        return model if not views or model.views == list(views) else model.with_views(views)
    return Ensemble([model], views) if views else model


def data_for_model(data_cfg: Mapping, model: Scorer) -> RadiographDataModule:
    """The configured data, read with the preprocessing the model was trained with."""
    trained = dict(model.hparams.preprocess)
    if dict(data_cfg.get("preprocess", {})) != trained:
        log.info("using the checkpoint's preprocessing %s", trained)
    return instantiate(
        data_cfg, preprocess=trained, task=model.hparams.task, classes=list(model.hparams.classes)
    )


def validate_evaluation_config(
    evaluation: Mapping[str, Any],
    datamodule: RadiographDataModule,
    operating_point: Mapping[str, Any] | None = None,
    splits: Iterable[str] = ("val", "test"),
) -> None:
    """Check, before training or inference, everything the evaluation will need.

    Call it before ``trainer.fit``: it reads the manifest (and its split assignment) only.

    Args:
        evaluation: the ``evaluation`` config (``subgroups``, ``n_bootstrap``, ``tta``, ...).
        datamodule: the data to evaluate.
        operating_point: the model's ``operating_point`` (``rule``, ``target``); None: Youden.
        splits: the splits that will be predicted (validation chooses the thresholds).

    Raises:
        EvaluationSetupError: an unknown operating-point rule or bad target, a bad ``tta``
            (see :func:`tta_views`), a subgroup column absent from the manifest, a negative
            ``n_bootstrap``, or an empty or single-class split (named with its counts).
    """
    rule = dict(operating_point or DEFAULT_RULE)
    try:
        check_rule(rule.get("rule", "youden"), rule.get("target"))
    except ValueError as err:
        raise EvaluationSetupError(f"model.operating_point {rule}: {err}") from err
    tta_views(evaluation)
    n_bootstrap = evaluation.get("n_bootstrap", 1000)
    if not isinstance(n_bootstrap, int) or n_bootstrap < 0:
        raise EvaluationSetupError(
            f"evaluation.n_bootstrap must be an integer >= 0, got {n_bootstrap!r}"
        )
    manifest = datamodule.load()
    wanted = list(evaluation.get("subgroups") or [])
    missing = [c for c in wanted if c not in manifest.columns]
    if missing:
        raise EvaluationSetupError(
            f"evaluation.subgroups names column(s) {missing} absent from {manifest.source}; "
            f"its columns are {sorted(manifest.columns)}"
        )
    for split in splits:
        rows = datamodule.rows(split)
        if rows.size == 0:
            raise EvaluationSetupError(
                f"the {split!r} split of {manifest.source} is empty: it cannot be evaluated "
                "(give rows split={split} in the manifest or raise data.split fractions)"
            )
        targets = manifest.targets[rows]
        one_class = []
        for k, name in enumerate(manifest.output_names):
            pos = int(np.nansum(targets[:, k] == 1))
            neg = int(np.nansum(targets[:, k] == 0))
            if pos == 0 or neg == 0:
                one_class.append(f"{name!r}: {pos} positive, {neg} negative")
        if len(one_class) == len(manifest.output_names):
            raise EvaluationSetupError(
                f"the {split!r} split of {manifest.source} ({rows.size} scans) holds one class "
                f"only for every output ({'; '.join(one_class)}): both classes are needed to "
                "choose an operating point and compute AUC"
            )
        if one_class:  # multi-label: the other findings can still be scored
            log.warning(
                "the %r split of %s holds one class only for %s: their AUC and operating point "
                "will be undefined (null with a reason)",
                split,
                manifest.source,
                "; ".join(one_class),
            )


def fit_thresholds(model: Scorer, dm: RadiographDataModule, batch_size: int = 64) -> np.ndarray:
    """Choose each output's decision threshold on the validation split and store it in the model."""
    rule = dict(model.hparams.operating_point or DEFAULT_RULE)
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
    model: Scorer,
    dm: RadiographDataModule,
    out_dir: Path,
    cfg: Mapping[str, Any],
    split: str = "test",
) -> dict[str, Any]:
    """Predict a split and write predictions, metrics, plots and a summary into ``out_dir``.

    The decision thresholds are the model's (chosen on validation after training) or, for a
    checkpoint without them, chosen on validation now; with ``temperature_scaling`` a temperature
    fitted on the validation logits calibrates the probabilities (thresholds mapped with them,
    so decisions are unchanged, or the evaluation stops). Nothing is ever tuned on the evaluated
    split.

    A seed ensemble (``model`` an :class:`Ensemble`) or test-time augmentation (``cfg.tta``)
    scores the mean logit; a member's stored thresholds do not apply to that score, so the
    operating point (and the temperature) is chosen on validation with the same members and
    views, which ``threshold_rule`` records (``members``: path and sha256; ``tta_views``).

    Raises:
        EvaluationSetupError: see :func:`validate_evaluation_config` (checked before predicting).
    """
    batch_size = cfg.get("batch_size", 64)
    model = with_tta(model, tta_views(cfg))
    thresholds = model.thresholds.cpu().numpy()
    needs_val = bool(np.isnan(thresholds).any() or cfg.get("temperature_scaling"))
    validate_evaluation_config(
        cfg, dm, model.hparams.operating_point, splits=[split, "val"] if needs_val else [split]
    )
    rule = {**dict(model.hparams.operating_point or {}), "chosen_on": "validation"}
    if isinstance(model, Ensemble):
        rule.update(model.describe())
        log.info(
            "scoring the mean logit of %d checkpoint(s) over %d view(s) %s; the operating point "
            "is chosen on validation with the same members and views (a member's stored "
            "thresholds do not apply to the averaged score)",
            len(model.members),
            len(model.views),
            [v.as_dict() for v in model.views],
        )
    if np.isnan(thresholds).any():
        thresholds = fit_thresholds(model, dm, batch_size)
    res = predict_dataset(model, dm.dataset(split, train=False), batch_size=batch_size)
    prob = res["prob"]
    if cfg.get("temperature_scaling"):
        val = predict_dataset(model, dm.dataset("val", train=False), batch_size=batch_size)
        temperature = fit_temperature(val["logit"], val["target"])
        prob, thresholds = temperature_scale_probabilities(res["logit"], thresholds, temperature)
        rule["temperature"] = float(temperature)
        log.info("temperature scaling: T = %.3f (fitted on validation)", temperature)
    manifest = dm.load()
    wanted = list(cfg.get("subgroups") or [])
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = write_evaluation(
        out_dir,
        y_true=res["target"],
        y_prob=prob,
        names=model.output_names,
        thresholds=np.asarray(thresholds, dtype=np.float64),
        patient_ids=res["patient_id"],
        paths=res["path"],
        extra_columns={c: manifest.columns[c][res["index"]] for c in wanted},
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
