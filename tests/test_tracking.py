"""The ecosystem's conventions: TensorBoard and MLflow loggers, ``debug=fast``, an Optuna sweep."""

from __future__ import annotations

import csv
import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from chestxr.train import train
from tests.conftest import REPO_ROOT, compose_config

TINY = [
    "debug=fast",
    "data.manifest.n_images=48",
    "data.manifest.size_range=[96,128]",
    "trainer.limit_train_batches=2",
]


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (False too when a parent package is missing)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # find_spec imports the parents: no hydra_plugins at all
        return False


HAVE_TENSORBOARD = installed("tensorboard")
HAVE_MLFLOW = installed("mlflow")
HAVE_OPTUNA_SWEEPER = installed("hydra_plugins.hydra_optuna_sweeper")


def available_loggers() -> list[str]:
    return [
        "csv",
        *(["tensorboard"] if HAVE_TENSORBOARD else []),
        *(["mlflow"] if HAVE_MLFLOW else []),
    ]


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    """One ``debug=fast`` run logging to CSV and to every tracking package installed."""
    tmp = tmp_path_factory.mktemp("fast")
    cfg = compose_config("train", tmp, [*TINY, f"logger=[{','.join(available_loggers())}]"])
    metrics, _ = train(cfg)
    return {"cfg": cfg, "run": Path(cfg.paths.output_dir), "metrics": metrics}


def test_debug_fast_is_a_short_whole_run(fast_run):
    cfg, run = fast_run["cfg"], fast_run["run"]
    assert cfg.task_name == "debug"
    assert cfg.data.preprocess.image_size == 64 and cfg.make_report is False
    with open(run / "logs" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    epochs = {int(r["epoch"]) for r in rows if r.get("train/loss_epoch")}
    assert epochs == {0}  # one epoch
    steps = {int(r["step"]) for r in rows if r.get("train/loss_step")}
    assert max(steps) < 2  # of two batches only
    assert (run / "checkpoints" / "model.ckpt").is_file()
    assert (run / "evaluation" / "metrics.json").is_file()
    assert not (run / "report").exists()
    # the sweep's objective: the checkpoint's best validation score, equal to the logged one
    val_auc = [float(r["val/auc"]) for r in rows if r.get("val/auc")]
    assert fast_run["metrics"]["val/auc_best"] == pytest.approx(max(val_auc), abs=1e-6)


@pytest.mark.skipif(not HAVE_TENSORBOARD, reason="tensorboard not installed (chestxr[tracking])")
def test_tensorboard_logger_writes_events(fast_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((fast_run["run"] / "tensorboard").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    tags = set()
    for path in events:
        acc = EventAccumulator(str(path))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"val/auc", "train/loss_epoch"} <= tags


@pytest.mark.skipif(not HAVE_MLFLOW, reason="mlflow not installed (chestxr[tracking])")
def test_mlflow_logger_tracks_in_the_run_folder(fast_run):
    import mlflow

    store = fast_run["run"] / "mlflow.db"
    assert store.is_file(), "MLflow did not track into the run folder"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "chestxr"]
    (mlrun,) = client.search_runs([experiment.experiment_id])
    history = client.get_metric_history(mlrun.info.run_id, "val/auc")
    assert history and all(0.0 <= m.value <= 1.0 for m in history)
    assert {"val/auc", "train/loss_epoch"} <= set(mlrun.data.metrics)


@pytest.mark.skipif(
    not HAVE_OPTUNA_SWEEPER, reason="hydra-optuna-sweeper not installed (chestxr[sweep])"
)
@pytest.mark.slow  # ~30 s: two trials, each a training run
def test_optuna_sweep_runs_two_trials(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "chestxr.train",
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2",
        f"hydra.sweep.dir={sweep}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        *TINY,  # no test=false: the search config itself keeps trials off the test split
    ]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    trials = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in trials] == ["0", "1"]
    best_per_trial = []
    lrs = []
    for trial in trials:
        with open(trial / "logs" / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        aucs = [float(r["val/auc"]) for r in rows if r.get("val/auc")]
        assert not [k for k in rows[0] if k.startswith("test/")], trial  # test split untouched
        best_per_trial.append(max(aucs))
        overrides = yaml.safe_load((trial / ".hydra" / "overrides.yaml").read_text())
        lrs += [float(o.split("=", 1)[1]) for o in overrides if o.startswith("model.optimizer.lr=")]
    assert len(lrs) == 2 and lrs[0] != lrs[1]  # the sampler drew the parameters
    assert all(1e-4 <= lr <= 3e-3 for lr in lrs)
    assert math.isclose(result["best_value"], max(best_per_trial), abs_tol=1e-6)
    assert set(result["best_params"]) == {
        "model.optimizer.lr",
        "model.optimizer.weight_decay",
        "data.augment.prob",
    }
