"""Training as library code: checks before the first epoch, the fit, and the final model.

``chestxr/train.py`` (the command) composes the config and calls :func:`train`; everything else
lives here or in the packages it calls. The evaluation and the report are reached through
:func:`_evaluation_functions` only (the one place to switch when they leave the command modules).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from chestxr import __version__
from chestxr.data.manifest import Manifest
from chestxr.evaluation.run import validate_evaluation_config
from chestxr.models.checkpoint_io import save_checkpoint_file
from chestxr.utils.checkpoints import load_tensors_only
from chestxr.utils.files import RUN_MARKERS, atomic_write_json, ensure_fresh_run_dir
from chestxr.utils.hardware import resolve_precision
from chestxr.utils.instantiate import check_types, instantiate_group
from chestxr.utils.timing import EpochTimer, PhaseTimes

log = logging.getLogger(__name__)

BOX_KEYS = ("x", "y", "width", "height")
# keys of the trainer config that train() fills in itself
_TRAINER_FILLED = ("precision", "callbacks", "logger")


def _evaluation_functions() -> tuple[Any, Any, Any]:
    """``(fit_thresholds, evaluate_model, report_model)``, imported when the run gets there."""
    from chestxr.evaluation.run import evaluate_model, fit_thresholds
    from chestxr.explain.report_builder import report_model

    return fit_thresholds, evaluate_model, report_model


# -- checks before the first epoch -----------------------------------------------------------
def check_config(cfg: DictConfig) -> None:
    """Check what the config alone decides, before anything is built (seconds, no data read).

    Raises:
        TypeError: a trainer, model or data value of the wrong type (key and value named).
        ValueError: an unknown report method or operating-point rule (key and value named).
    """
    check_types(cfg.trainer, cfg.trainer._target_, "trainer", skip=_TRAINER_FILLED)
    check_types(cfg.model, cfg.model._target_, "model")
    check_types(cfg.data, cfg.data._target_, "data")
    if cfg.get("test") and cfg.get("make_report"):
        from chestxr.explain.cam import CAM_METHODS

        unknown = [m for m in cfg.report.get("methods", []) if m not in CAM_METHODS]
        if unknown:
            raise ValueError(f"report.methods: unknown {unknown}; choose from {list(CAM_METHODS)}")
    op = cfg.model.get("operating_point") or {}
    from chestxr.evaluation.operating_point import RULES

    if op.get("rule", "youden") not in RULES:
        raise ValueError(
            f"model.operating_point.rule={op.get('rule')!r} unknown; choose from {list(RULES)}"
        )


def check_boxes(manifest: Manifest) -> None:
    """Every ``boxes`` cell is blank or a JSON list of ``{x, y, width, height[, label]}``.

    Raises:
        ValueError: a cell that cannot be read, naming the manifest, its row and the cell.
    """
    cells = manifest.columns.get("boxes")
    if cells is None:
        return
    for row, text in enumerate(cells):
        if not text:
            continue
        where = f"{manifest.source} row {row + 2} (data row {row + 1}), column 'boxes'"
        try:
            boxes = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not JSON ({err.msg}): {text[:80]!r}") from err
        if not isinstance(boxes, list):
            raise ValueError(f"{where}: expected a JSON list of boxes, got {text[:80]!r}")
        for box in boxes:
            ok = isinstance(box, dict) and all(
                isinstance(box.get(k), int | float)
                and not isinstance(box.get(k), bool)
                and math.isfinite(box[k])
                for k in BOX_KEYS
            )
            if not ok or box["width"] < 0 or box["height"] < 0:
                raise ValueError(
                    f"{where}: each box needs finite numbers {list(BOX_KEYS)} (width, height "
                    f">= 0), got {json.dumps(box)[:80]}"
                )


def check_splits(cfg: DictConfig, datamodule: Any) -> None:
    """The splits the run trains and scores on exist, and the evaluation can run on them.

    Raises:
        ValueError: an empty training split; (``EvaluationSetupError``) an empty or single-class
            validation or test split, an unknown operating-point rule, a subgroup column the
            manifest lacks (each named).
    """
    m = datamodule.load()
    if len(datamodule.rows("train")) == 0:
        raise ValueError(f"the 'train' split of {m.source} is empty")
    validate_evaluation_config(
        cfg.get("evaluation") or {},
        datamodule,
        cfg.model.get("operating_point"),
        splits=["val", "test"] if cfg.get("test") else ["val"],
    )


def check_resume_target(ckpt_path: str | Path, out_dir: Path) -> dict[str, Any]:
    """Allow resuming only into the run folder the checkpoint belongs to, or a new/empty one.

    Returns:
        The checkpoint's hyperparameters.

    Raises:
        FileNotFoundError: no checkpoint at ``ckpt_path``.
        FileExistsError: ``out_dir`` holds another run's outputs.
    """
    ckpt = Path(ckpt_path).expanduser()
    if not ckpt.is_file():
        raise FileNotFoundError(f"ckpt_path: no checkpoint at {ckpt}")
    if out_dir.resolve() not in ckpt.resolve().parents:
        taken = [m for m in RUN_MARKERS if (out_dir / m).exists()]
        if taken:
            raise FileExistsError(
                f"ckpt_path={ckpt} belongs to another run than {out_dir}, which holds a run's "
                f"outputs ({', '.join(taken)}); resume into the checkpoint's own run folder "
                "(hydra.run.dir) or a new one"
            )
        out_dir.mkdir(parents=True, exist_ok=True)
    state = load_tensors_only(ckpt)
    return dict(state.get("hyper_parameters") or {})


# -- after the fit ----------------------------------------------------------------------------
def run_summary(cfg: DictConfig, trainer: L.Trainer, datamodule: Any, model: Any) -> dict:
    """What a model card says about the run: data, validation score, config hash, version."""
    m = datamodule.load()
    data: dict[str, Any] = {"manifest": str(m.source), "outputs": m.output_names, "splits": {}}
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
        "initialisation": model.hparams.get("init_source"),
        "validation": {
            "monitor": trainer.checkpoint_callback.monitor,
            "best": None if score is None else float(score),
        },
        "config_hash": hashlib.sha256(text.encode()).hexdigest()[:16],
    }


@rank_zero_only
def finish(
    cfg: DictConfig,
    trainer: L.Trainer,
    datamodule: Any,
    out_dir: Path,
    times: PhaseTimes | None = None,
) -> dict[str, Any]:
    """Store the validation operating point in the best checkpoint, then evaluate and report."""
    times = times or PhaseTimes()
    from chestxr.inference import load_model

    fit_thresholds, evaluate_model, report_model = _evaluation_functions()
    best = trainer.checkpoint_callback.best_model_path or next(
        (c.best_model_path for c in trainer.checkpoint_callbacks if c.best_model_path), ""
    )  # no best on the monitor (e.g. never computed): the latest epoch's
    model = load_model(best)
    fit_thresholds(model, datamodule, cfg.evaluation.get("batch_size", 64))
    final = out_dir / "checkpoints" / "model.ckpt"
    ckpt = load_tensors_only(best)
    ckpt["state_dict"] = {k: v.cpu() for k, v in model.state_dict().items()}
    ckpt["chestxr"] = run_summary(cfg, trainer, datamodule, model)
    save_checkpoint_file(ckpt, final)
    log.info("final model (best on validation, with its operating point): %s", final)
    with times.phase("evaluation"):
        metrics = evaluate_model(model, datamodule, out_dir / "evaluation", cfg.evaluation)
    if cfg.get("make_report"):
        with times.phase("report"):
            report_model(model, datamodule, out_dir / "report", cfg.report)
    return metrics


@rank_zero_only
def write_timings(out_dir: Path, summary: dict[str, Any]) -> None:
    """``<run>/timings.json``: where the run's wall time went (:mod:`chestxr.utils.timing`)."""
    atomic_write_json(out_dir / "timings.json", summary)
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in summary["phases_s"].items())
    log.info("wall time: %s", phases)


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit the model on the train split, select on validation, then test and report.

    Everything that can be checked before the first epoch is checked first (config types, report
    methods, operating point, manifest boxes, splits, subgroup columns), and the run folder is
    claimed: a new run never writes into another's folder; a resumed run only into its own.

    Returns:
        The metrics logged by the trainer (and the evaluation's when run), and the objects built.
    """
    out_dir = Path(cfg.paths.output_dir)
    check_config(cfg)
    model_kwargs: dict[str, Any] = {}
    if cfg.get("ckpt_path"):
        hp = check_resume_target(cfg.ckpt_path, out_dir)
        # the resumed weights come from the checkpoint: never read the initial source again
        if hp.get("init_source") is not None:
            model_kwargs["init_source"] = hp["init_source"]
        elif cfg.model.get("pretrained") or cfg.model.get("init_checkpoint"):
            model_kwargs["init_source"] = {"kind": "unrecorded", "resumed_from": str(cfg.ckpt_path)}
    elif rank_zero_only.rank == 0:
        ensure_fresh_run_dir(out_dir)
    L.seed_everything(cfg.seed, workers=True)
    times, epochs = PhaseTimes(), EpochTimer()

    datamodule = instantiate(cfg.data)
    with times.phase("data"):  # generating the synthetic set, or reading the manifest
        datamodule.prepare_data()
    if cfg.get("test") and cfg.get("make_report"):
        check_boxes(datamodule.load())
    check_splits(cfg, datamodule)
    model = instantiate(cfg.model, **model_kwargs)
    precision = resolve_precision(cfg.trainer.get("precision"), cfg.trainer.get("accelerator"))
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        precision=precision,
        callbacks=[*instantiate_group(cfg.get("callbacks")), epochs],
        logger=instantiate_group(cfg.get("logger")),
    )
    log.info("training %s on %s (%s)", model.output_names, cfg.data.get("manifest"), precision)
    with times.phase("fit"):
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    metrics: dict[str, Any] = dict(trainer.callback_metrics)
    best = trainer.checkpoint_callback
    if best is not None and best.best_model_score is not None:  # e.g. val/auc_best, for sweeps
        metrics[f"{best.monitor}_best"] = float(best.best_model_score)

    if cfg.get("test"):
        with times.phase("test"):
            trainer.test(model, datamodule=datamodule, ckpt_path="best", weights_only=True)
        metrics.update(trainer.callback_metrics)
        evaluation = finish(cfg, trainer, datamodule, out_dir, times)
        if evaluation:
            metrics["evaluation"] = evaluation
    write_timings(out_dir, times.summary(epochs.seconds))
    log.info("run folder: %s", out_dir.resolve())
    return metrics, {"datamodule": datamodule, "model": model, "trainer": trainer}
