"""Longer real runs, marked slow (CI runs them after the default suite): the README's main
command on its defaults, and a multi-label synthetic run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from chestxr.train import train
from tests.conftest import REPO_ROOT, compose_config

pytestmark = pytest.mark.slow


def test_readme_main_command(tmp_path):
    """``python -m chestxr.train`` on its defaults: test AUC >= 0.95, one overlay per test scan,
    pointing game (Zhang et al.'s tolerance) >= 0.80 on true positives, >= 0.70 without tolerance,
    randomised-model CAMs uncorrelated with the trained ones."""
    run = tmp_path / "run"
    env = {**os.environ, "CHESTXR_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "chestxr.train",
            f"hydra.run.dir={run}",
            "trainer.enable_progress_bar=false",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(run) in proc.stdout + proc.stderr  # it says where its outputs are
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert metrics["outputs"]["opacity"]["metrics"]["roc_auc"] >= 0.95
    with open(run / "evaluation" / "predictions.csv") as f:
        n_test = sum(1 for _ in csv.DictReader(f))
    html = (run / "report" / "report.html").read_text()
    assert html.count("class='card") == n_test
    assert len(list((run / "report" / "overlays").glob("*_gradcam.jpg"))) == n_test
    cams = json.loads((run / "report" / "cam_metrics.json").read_text())["outputs"]["opacity"]
    assert cams["gradcam"]["pointing_game"] >= 0.80
    assert cams["gradcam"]["pointing_game_strict"] >= 0.70
    assert cams["gradcam"]["randomisation_spearman"] < 0.3


def test_multilabel_synthetic_learns_every_finding(tmp_path):
    cfg = compose_config(
        "train",
        tmp_path,
        [
            "data=synthetic_multilabel",
            "data.preprocess.image_size=128",
            "data.num_workers=2",
            "trainer.max_epochs=10",
            "trainer.enable_progress_bar=false",
            "evaluation.n_bootstrap=200",
            "report.methods=[gradcam]",
            "report.max_scans=10",
            "report.faithfulness_scans=4",
            "report.target_layer=net.layer3",
        ],
    )
    train(cfg)
    run = tmp_path / "run"
    with open(run / "logs" / "metrics.csv") as f:
        log = list(csv.DictReader(f))
    findings = ["opacity", "effusion", "cardiomegaly"]
    for name in findings:
        best = max(float(r[f"val/auc_{name}"]) for r in log if r.get(f"val/auc_{name}"))
        assert best >= 0.85, (name, best)
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert set(metrics["outputs"]) == set(findings) and metrics["macro"]["roc_auc"] >= 0.8
    html = (run / "report" / "report.html").read_text()
    assert all(name in html for name in findings)
    cams = json.loads((run / "report" / "cam_metrics.json").read_text())
    assert set(cams["outputs"]) == set(findings)
