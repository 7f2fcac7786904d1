"""evaluation.run on a tiny synthetic set: checks before anything runs; validation thresholds."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from chestxr.data.datamodule import RadiographDataModule
from chestxr.evaluation.run import (
    EvaluationSetupError,
    evaluate_model,
    validate_evaluation_config,
)
from chestxr.inference import predict_dataset
from tests.conftest import TINY_SYNTHETIC, compose_config

OVERRIDES = [
    *TINY_SYNTHETIC,
    "data.manifest.n_images=80",
    "data.manifest.size_range=[64,80]",
    "data.cache=none",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evalrun")
    cfg = compose_config("train", tmp, OVERRIDES)
    torch.manual_seed(0)
    dm = instantiate(cfg.data)
    model = instantiate(cfg.model).eval()  # untrained: scores that differ scan to scan
    return {"tmp": tmp, "cfg": cfg, "dm": dm, "model": model}


def _evaluation(setup, **changes) -> dict:
    return {**OmegaConf.to_container(setup["cfg"].evaluation), **changes}


def _youden_optima(y: np.ndarray, p: np.ndarray) -> set[float]:
    """Every score threshold that maximises sensitivity + specificity - 1 (brute force)."""
    scores = {}
    for t in np.unique(p):
        pred = p >= t
        scores[float(t)] = pred[y == 1].mean() + (~pred[y == 0]).mean() - 1
    best = max(scores.values())
    return {t for t, j in scores.items() if j >= best - 1e-12}


def test_operating_point_is_the_brute_force_optimum_on_validation(setup, tmp_path):
    model, dm = setup["model"], setup["dm"]
    model.thresholds.fill_(float("nan"))  # a checkpoint without thresholds: chosen now
    metrics = evaluate_model(model, dm, tmp_path / "ev", _evaluation(setup, n_bootstrap=0))
    chosen = metrics["outputs"]["opacity"]["threshold"]

    val = predict_dataset(model, dm.dataset("val", train=False))
    test = predict_dataset(model, dm.dataset("test", train=False))
    on_val = _youden_optima(val["target"][:, 0], val["prob"][:, 0].astype(np.float64))
    on_test = _youden_optima(test["target"][:, 0], test["prob"][:, 0].astype(np.float64))
    assert not on_val & on_test  # the check can tell the two splits apart
    assert any(chosen == pytest.approx(t, rel=1e-6) for t in on_val), (chosen, on_val)
    assert metrics["outputs"]["opacity"]["threshold_rule"]["chosen_on"] == "validation"


def test_predicted_probabilities_hold_at_extreme_logits(setup):
    model, dm = setup["model"], setup["dm"]
    fc = model.net.fc if hasattr(model, "net") else None
    if fc is None:
        fc = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    saved = (fc.weight.detach().clone(), fc.bias.detach().clone())
    try:
        with torch.no_grad():
            fc.weight.zero_()
            fc.bias.fill_(-1000.0)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # np.exp overflowed here before
            res = predict_dataset(model, dm.dataset("val", train=False))
    finally:
        with torch.no_grad():
            fc.weight.copy_(saved[0])
            fc.bias.copy_(saved[1])
    assert np.all(res["logit"] == -1000.0) and np.all(res["prob"] == 0.0)


def test_unknown_rule_and_bad_target_are_refused_before_anything_runs(setup):
    dm = setup["dm"]
    with pytest.raises(EvaluationSetupError, match="unknown threshold rule 'max_f1'"):
        validate_evaluation_config(_evaluation(setup), dm, {"rule": "max_f1"})
    with pytest.raises(EvaluationSetupError, match="needs a target in"):
        validate_evaluation_config(_evaluation(setup), dm, {"rule": "sensitivity", "target": 2})
    validate_evaluation_config(_evaluation(setup), dm, {"rule": "specificity", "target": 0.9})


def test_missing_subgroup_column_is_refused(setup):
    with pytest.raises(EvaluationSetupError, match=r"\['nope'\] absent from .*manifest"):
        validate_evaluation_config(_evaluation(setup, subgroups=["nope"]), setup["dm"])
    validate_evaluation_config(_evaluation(setup, subgroups=["modality"]), setup["dm"])


def _manifest(tmp_path: Path, rows: list[tuple[str, str]]) -> Path:
    """A manifest of placeholder files with given (label, split) rows (never decoded here)."""
    path = tmp_path / "m.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "patient_id", "split"])
        for i, (label, split) in enumerate(rows):
            (tmp_path / f"s{i}.png").write_bytes(b"x")
            w.writerow([f"s{i}.png", label, f"p{i}", split])
    return path


def _dm(manifest: Path) -> RadiographDataModule:
    return RadiographDataModule(
        manifest, "binary", ["normal", "opacity"], {"image_size": 64}, cache="none"
    )


def test_single_class_and_empty_splits_are_refused_with_counts(setup, tmp_path):
    train = [("normal", "train"), ("opacity", "train")] * 3
    val = [("normal", "val"), ("normal", "val")]
    one_class_val = [*train, *val, ("opacity", "test"), ("normal", "test")]
    dm = _dm(_manifest(tmp_path, one_class_val))
    with pytest.raises(
        EvaluationSetupError, match=r"'val' split .* one class only .*0 positive, 2 negative"
    ):
        validate_evaluation_config(_evaluation(setup), dm)

    (tmp_path / "b").mkdir()
    no_test = [*train, ("normal", "val"), ("opacity", "val")]
    dm = _dm(_manifest(tmp_path / "b", no_test))
    with pytest.raises(EvaluationSetupError, match=r"'test' split .* is empty"):
        validate_evaluation_config(_evaluation(setup), dm)
    validate_evaluation_config(_evaluation(setup), dm, splits=["val"])
