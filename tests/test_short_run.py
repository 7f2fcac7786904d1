"""``python -m chestxr.train trainer.max_epochs=1`` through the real config exits 0, JSON valid."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO_ROOT, TINY_SYNTHETIC

SHORT = [
    *TINY_SYNTHETIC,
    "data.manifest.n_images=60",
    "data.manifest.size_range=[64,80]",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "evaluation.n_bootstrap=20",
    "report.max_scans=4",
    "report.faithfulness_scans=2",
]


def strict_json(path):
    """Parse JSON refusing NaN/Infinity (which Python's json would accept)."""

    def refuse(token):
        raise ValueError(f"{path}: non-standard JSON number {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_one_epoch_run_exits_0_with_valid_json(tmp_path):
    """Whether CAMs come out constant after one epoch varies; the explain helper's NaN-as-null
    fix of cam_metrics.json (issue 12.4) is what makes this hold every time."""
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "chestxr.train",
        *SHORT,
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={run}",
    ]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(run.rglob("*.json"))
    assert run / "evaluation" / "metrics.json" in files
    for path in files:
        strict_json(path)
    assert (run / "checkpoints" / "model.ckpt").is_file()
    # where the wall time went: every phase that ran, and the one epoch
    timings = strict_json(run / "timings.json")
    assert list(timings["phases_s"]) == ["data", "fit", "test", "evaluation", "report"]
    assert all(v > 0 for v in timings["phases_s"].values())
    assert len(timings["epochs_s"]) == 1 and timings["later_epoch_mean_s"] is None
    assert timings["first_epoch_s"] <= timings["phases_s"]["fit"]
