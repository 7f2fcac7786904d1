"""Outputs written whole or not at all, never over another run; fail fast before the first epoch."""

from __future__ import annotations

import csv
import errno
import json
import os
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from chestxr.data.adapters import common
from chestxr.models.checkpoint_io import save_checkpoint_file
from chestxr.training import train
from chestxr.utils.hardware import resolve_precision
from chestxr.utils.instantiate import instantiate_group
from tests.conftest import compose_config
from tests.test_datamodule import make_set
from tests.test_finetuning import data, model

TINY = ["data.num_workers=0", "data.preprocess.image_size=32", "data.batch_size=8"]


def manifest_cfg(tmp: Path, *overrides: str):
    """The real train config on a 24-scan PNG manifest (seconds to load)."""
    folder = tmp / "scans"
    folder.mkdir(exist_ok=True)
    manifest = make_set(folder, n=24)
    return compose_config(
        "train",
        tmp,
        ["data=manifest", f"data.manifest={manifest}", "data.classes=[NEG,POS]", *TINY, *overrides],
    ), manifest


def configured_trainer(tmp: Path, **kw) -> L.Trainer:
    cfg = compose_config("train", tmp, ["trainer=cpu", "trainer.enable_progress_bar=false"])
    precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    return instantiate(cfg.trainer, precision=precision, callbacks=[], logger=False, **kw)


def disk_full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


# -- atomic outputs -------------------------------------------------------------------------
def test_lightning_checkpoint_on_a_full_disk_leaves_nothing_and_names_the_path(
    tmp_path, monkeypatch
):
    """The configured trainer saves through the atomic writer: fsync's ENOSPC is an error."""
    trainer = configured_trainer(tmp_path)
    m = model()
    trainer.strategy.connect(m)
    best = tmp_path / "checkpoints" / "best.ckpt"
    monkeypatch.setattr(os, "fsync", disk_full)  # a delayed-allocation ENOSPC shows at fsync
    with pytest.raises(OSError, match=r"disk full.*best\.ckpt") as err:
        trainer.save_checkpoint(best)
    assert err.value.errno == errno.ENOSPC
    assert not best.exists() and not list(best.parent.glob("*.tmp"))
    monkeypatch.undo()
    trainer.save_checkpoint(best)
    assert torch.load(best, weights_only=True)["hyper_parameters"]["classes"] == ["NEG", "POS"]


def test_model_ckpt_on_a_full_disk_keeps_the_earlier_file(tmp_path, monkeypatch):
    final = tmp_path / "checkpoints" / "model.ckpt"
    save_checkpoint_file({"v": 1}, final)
    before = final.read_bytes()

    def half_then_full(obj, f, *a, **k):
        Path(f).write_bytes(b"PK\x03\x04 truncated")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_full)
    with pytest.raises(OSError, match=r"disk full.*model\.ckpt"):
        save_checkpoint_file({"v": 2}, final)
    assert final.read_bytes() == before
    assert sorted(p.name for p in final.parent.iterdir()) == ["model.ckpt"]


def test_adapter_manifest_gets_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        rows = [{"path": "a.png", "label": "x", "patient_id": "p1"}]
        out = common.write_manifest(rows, tmp_path / "manifest.csv", common.BASE_COLUMNS)
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644


# -- never over another run -------------------------------------------------------------------
def test_resume_into_another_run_is_refused(tmp_path):
    run_a = tmp_path / "a"
    ckpt = run_a / "checkpoints" / "last.ckpt"
    save_checkpoint_file({"hyper_parameters": {"classes": ["x", "y"]}}, ckpt)
    cfg, _ = manifest_cfg(tmp_path, f"ckpt_path={ckpt}")
    run_b = Path(cfg.paths.output_dir)
    save_checkpoint_file({"theirs": True}, run_b / "checkpoints" / "model.ckpt")
    before = (run_b / "checkpoints" / "model.ckpt").read_bytes()
    with pytest.raises(FileExistsError, match="another run"):
        train(cfg)
    assert (run_b / "checkpoints" / "model.ckpt").read_bytes() == before


def test_resumed_run_keeps_the_earlier_epochs_metrics(tmp_path):
    """The configured CSV logger keeps the rows of the epochs before the interruption."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    cfg = compose_config("train", tmp_path, [])

    class Interrupt(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                trainer.should_stop = True

    def run(ckpt=None, interrupt=False):
        L.seed_everything(0)
        cb = ModelCheckpoint(dirpath=tmp_path / "run" / "checkpoints", save_last=True)
        t = L.Trainer(
            max_epochs=3,
            accelerator="cpu",
            logger=instantiate_group(cfg.logger),
            callbacks=[cb, Interrupt()] if interrupt else [cb],
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            log_every_n_steps=1,
            limit_train_batches=1,
            limit_val_batches=2,
        )
        t.fit(model(), datamodule=data(tmp_path), ckpt_path=ckpt)

    run(interrupt=True)
    log = tmp_path / "run" / "logs" / "metrics.csv"
    with open(log, newline="") as f:
        first = [r for r in csv.DictReader(f) if r.get("val/auc")]
    assert [r["epoch"] for r in first] == ["0", "1"]
    run(ckpt=str(tmp_path / "run" / "checkpoints" / "last.ckpt"))
    with open(log, newline="") as f:
        rows = list(csv.DictReader(f))
    val = [r for r in rows if r.get("val/auc")]
    assert [r["epoch"] for r in val] == ["0", "1", "2"]
    assert [r["val/auc"] for r in val[:2]] == [r["val/auc"] for r in first]
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(steps)


# -- fail fast ------------------------------------------------------------------------------
def fails_fast(cfg, error, match):
    start = time.monotonic()
    with pytest.raises(error, match=match):
        train(cfg)
    assert time.monotonic() - start < 30  # before any epoch (an epoch is not what is timed here)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def test_wrong_type_names_the_key(tmp_path):
    cfg, _ = manifest_cfg(tmp_path, "trainer.max_epochs=abc")
    fails_fast(cfg, TypeError, r"trainer\.max_epochs='abc': expected int")


def test_wrong_model_type_names_the_key(tmp_path):
    cfg, _ = manifest_cfg(tmp_path, "model.channels_last=maybe")
    fails_fast(cfg, TypeError, r"model\.channels_last='maybe'")


def test_unknown_report_method_is_named(tmp_path):
    cfg, _ = manifest_cfg(tmp_path, "report.methods=[gradcam,nope]")
    fails_fast(cfg, ValueError, r"report\.methods.*nope")


def test_unknown_operating_point_rule_is_named(tmp_path):
    cfg, _ = manifest_cfg(tmp_path, "model.operating_point.rule=nope")
    fails_fast(cfg, ValueError, r"operating_point\.rule='nope'")


def test_missing_subgroup_column_is_named_before_training(tmp_path):
    cfg, _ = manifest_cfg(tmp_path, "evaluation.subgroups=[sex]")
    fails_fast(cfg, ValueError, r"evaluation\.subgroups.*\['sex'\]")


def test_unparseable_box_cell_names_the_row(tmp_path):
    cfg, manifest = manifest_cfg(tmp_path)
    with open(manifest, newline="") as f:
        rows = list(csv.reader(f))
    rows[0].append("boxes")
    for i, r in enumerate(rows[1:], start=1):
        r.append(json.dumps([{"x": 1, "y": 2}]) if i == 5 else "")
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    fails_fast(cfg, ValueError, r"manifest\.csv row 6 .*'boxes'.*width")


def test_single_class_validation_split_is_refused(tmp_path):
    cfg, manifest = manifest_cfg(tmp_path)
    with open(manifest, newline="") as f:
        rows = list(csv.reader(f))
    rows[0].append("split")
    for i, r in enumerate(rows[1:]):  # validation (patients p0-p3): negatives only
        r[1] = "NEG" if i < 8 else r[1]
        r.append("val" if i < 8 else ("test" if i >= 16 else "train"))
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    fails_fast(cfg, ValueError, r"'val' split .* one class only")


def test_checks_pass_on_a_good_config(tmp_path):
    """The checks refuse nothing a normal run has (the whole run is tested elsewhere)."""
    from chestxr.training import check_config, check_splits

    cfg, _ = manifest_cfg(tmp_path, "evaluation.subgroups=[]")
    check_config(cfg)
    check_splits(cfg, instantiate(cfg.data))
    cfg = compose_config("train", tmp_path, ["model=resnet18_imagenet", "trainer=ddp_cpu"])
    check_config(cfg)


def test_last_checkpoint_holds_every_finished_epoch(tmp_path):
    """A run killed during epoch N resumes from epoch N-1, not from its last improving epoch:
    Lightning's save_last rewrites last.ckpt only in epochs that improve the monitor (here
    none after the first: the monitor is the epoch, minimised)."""
    probe = "callbacks.probe._target_=tests.helpers.checkpoints.LastCheckpointProbe"
    cfg, _ = manifest_cfg(
        tmp_path,
        "trainer.max_epochs=3",
        "callbacks.model_checkpoint.monitor=epoch",
        "callbacks.model_checkpoint.mode=min",
        "callbacks.early_stopping=null",
        f"+{probe}",
        f"+callbacks.probe.path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}",
        "test=false",
    )
    _, objects = train(cfg)
    probe_cb = next(c for c in objects["trainer"].callbacks if hasattr(c, "seen"))
    assert probe_cb.seen == [0, 1]
    assert objects["trainer"].checkpoint_callback.best_model_path.endswith("best.ckpt")
