"""A short real training run on synthetic DICOMs: it learns, and every entry point works on it."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from chestxr.evaluate import evaluate
from chestxr.inference import load_model
from chestxr.report import report
from chestxr.train import train
from tests.conftest import REPO_ROOT, TINY_SYNTHETIC, compose_config

RUN_OVERRIDES = [
    *TINY_SYNTHETIC,
    "data.manifest.n_images=200",
    "data.manifest.size_range=[96,128]",
    "trainer.max_epochs=8",
    "trainer.enable_progress_bar=false",
    "report.methods=[gradcam]",
    "evaluation.subgroups=[modality,photometric]",
]


def run_predict(trained, folder: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """``python -m chestxr.predict`` with the trained run's final checkpoint."""
    ckpt = trained["run"] / "checkpoints" / "model.ckpt"
    cmd = [
        sys.executable,
        "-m",
        "chestxr.predict",
        f"ckpt_path={ckpt}",
        f"input={folder}",
        f"hydra.run.dir={out}",
        *extra,
    ]
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    cfg = compose_config("train", tmp, RUN_OVERRIDES)
    metrics, objects = train(cfg)
    return {"tmp": tmp, "run": Path(cfg.paths.output_dir), "metrics": metrics, **objects}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_model_learns(trained):
    log = read_csv(trained["run"] / "logs" / "metrics.csv")
    train_loss = [float(r["train/loss_epoch"]) for r in log if r.get("train/loss_epoch")]
    val_auc = [float(r["val/auc"]) for r in log if r.get("val/auc")]
    assert len(train_loss) >= 3
    assert train_loss[-1] < 0.7 * train_loss[0], train_loss
    assert max(val_auc) >= 0.9, val_auc
    assert trained["metrics"]["evaluation"]["outputs"]["opacity"]["metrics"]["roc_auc"] >= 0.85


def test_no_patient_in_two_splits(trained):
    m = trained["datamodule"].load()
    for split_a, split_b in [("train", "val"), ("train", "test"), ("val", "test")]:
        a = set(m.patient_ids[m.splits == split_a])
        b = set(m.patient_ids[m.splits == split_b])
        assert a and b and not a & b


def test_metrics_json_agrees_with_sklearn(trained):
    ev = trained["run"] / "evaluation"
    rows = read_csv(ev / "predictions.csv")
    y = np.array([float(r["label_opacity"]) for r in rows])
    p = np.array([float(r["prob_opacity"]) for r in rows])
    metrics = json.loads((ev / "metrics.json").read_text())["outputs"]["opacity"]
    assert metrics["metrics"]["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    t = metrics["threshold"]
    tp = int(((p >= t) & (y == 1)).sum())
    assert metrics["metrics"]["sensitivity"] == pytest.approx(tp / (y == 1).sum())
    for name in ("roc.png", "confusion_matrix.png", "summary.html"):
        assert (ev / name).stat().st_size > 0


def test_subgroups_by_generated_columns_appear_in_the_summary(trained):
    ev = trained["run"] / "evaluation"
    metrics = json.loads((ev / "metrics.json").read_text())
    assert set(metrics["subgroups"]["modality"]) == {"CR", "DX"}
    assert set(metrics["subgroups"]["photometric"]) == {"MONOCHROME1", "MONOCHROME2"}
    html = (ev / "summary.html").read_text()
    assert "modality" in html and "MONOCHROME1" in html
    rows = read_csv(ev / "predictions.csv")
    assert {r["modality"] for r in rows} == {"CR", "DX"}


def test_test_threshold_is_the_validation_one(trained):
    from chestxr.evaluation.run import fit_thresholds

    ckpt = trained["run"] / "checkpoints" / "model.ckpt"
    model = load_model(ckpt)
    stored = model.thresholds.cpu().numpy()
    assert np.isfinite(stored).all()
    metrics = json.loads((trained["run"] / "evaluation" / "metrics.json").read_text())
    assert metrics["outputs"]["opacity"]["threshold"] == pytest.approx(float(stored[0]))
    # recomputing on validation gives the stored value back; the test split never chose it
    assert fit_thresholds(model, trained["datamodule"])[0] == pytest.approx(float(stored[0]))


def test_report_has_one_card_per_test_scan(trained):
    rep = trained["run"] / "report"
    html = (rep / "report.html").read_text()
    n_test = len(trained["datamodule"].rows("test"))
    n = min(n_test, 12)  # report.max_scans
    assert html.count("class='card") == n
    assert len(list((rep / "overlays").glob("*_gradcam.jpg"))) == n
    cams = json.loads((rep / "cam_metrics.json").read_text())
    assert cams["n_scans"] == n and "gradcam" in cams["outputs"]["opacity"]
    # Zhang et al.'s 15 px at 224, scaled to the 64 px input; the tolerant game never scores lower
    assert cams["pointing_tolerance_px"] == pytest.approx(15 * 64 / 224)
    game = cams["outputs"]["opacity"]["gradcam"]
    if game["pointing_game_n"]:
        assert game["pointing_game"] >= game["pointing_game_strict"]
    assert "<script" in html and "data:image/jpeg;base64," in html and "http://" not in html


def test_evaluate_and_report_entry_points(trained):
    ckpt = trained["run"] / "checkpoints" / "model.ckpt"
    common = [o for o in RUN_OVERRIDES if o.startswith("data.")] + [f"ckpt_path={ckpt}"]
    ev_cfg = compose_config(
        "evaluate", trained["tmp"] / "ev", [*common, "evaluation.n_bootstrap=100"]
    )
    metrics = evaluate(ev_cfg)
    first = json.loads((trained["run"] / "evaluation" / "metrics.json").read_text())
    assert metrics["outputs"]["opacity"]["metrics"]["roc_auc"] == pytest.approx(
        first["outputs"]["opacity"]["metrics"]["roc_auc"], abs=1e-6
    )
    rep_cfg = compose_config(
        "report", trained["tmp"] / "rep", [*common, "report.methods=[gradcam]"]
    )
    cams = report(rep_cfg)
    assert cams["outputs"]["opacity"]["gradcam"]["randomisation_spearman"] is not None
    with pytest.raises(FileExistsError):  # a run folder is never overwritten
        evaluate(ev_cfg)


def test_predict_cli_lists_unreadable_files(trained, tmp_path):
    manifest = trained["datamodule"].load()
    folder = tmp_path / "incoming"
    folder.mkdir()
    for i, p in enumerate(manifest.paths[:3]):
        (folder / f"scan{i}.dcm").write_bytes(Path(p).read_bytes())
    (folder / "broken.dcm").write_bytes(Path(manifest.paths[0]).read_bytes()[:600])
    (folder / "notes.png").write_text("not an image")
    out = tmp_path / "pred"
    proc = run_predict(trained, folder, out, "cams=true", "include_paths=true")
    assert proc.returncode == 2, proc.stderr[-2000:]
    preds = read_csv(out / "predictions.csv")
    bad = read_csv(out / "unreadable.csv")
    assert sorted(Path(r["file"]).name for r in preds) == ["scan0.dcm", "scan1.dcm", "scan2.dcm"]
    assert sorted(Path(r["file"]).name for r in bad) == ["broken.dcm", "notes.png"]
    assert all(r["reason"] for r in bad)
    assert all(0 <= float(r["prob_opacity"]) <= 1 for r in preds)
    assert len(list((out / "cams").glob("*.png"))) == 3


def test_checkpoint_keeps_what_inference_needs(trained):
    ckpt = torch.load(trained["run"] / "checkpoints" / "model.ckpt", weights_only=True)
    hp = ckpt["hyper_parameters"]
    assert hp["classes"] == ["normal", "opacity"] and hp["preprocess"]["image_size"] == 64


def test_export_matches_the_checkpoint_and_writes_a_card(trained):
    from chestxr.export import export

    ckpt = trained["run"] / "checkpoints" / "model.ckpt"
    formats = ["torchscript"]
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError:
        onnxruntime = None
    else:
        formats.append("onnx")
    cfg = compose_config(
        "export", trained["tmp"] / "export", [f"ckpt_path={ckpt}", f"formats=[{','.join(formats)}]"]
    )
    card = export(cfg)
    out = trained["run"].parent / "export" / "run"
    model = load_model(ckpt, device=torch.device("cpu"))
    x = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x).numpy()
        scripted = torch.jit.load(str(out / "model.pt"))(x).numpy()
    assert np.abs(scripted - expected).max() < 1e-4
    if onnxruntime is not None:
        session = onnxruntime.InferenceSession(str(out / "model.onnx"))
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert np.abs(got - expected).max() < 1e-4
    on_disk = json.loads((out / "model_card.json").read_text())
    assert on_disk["outputs"] == ["opacity"] and on_disk["input"]["shape"] == [1, 64, 64]
    assert on_disk["decision_thresholds"]["opacity"] == pytest.approx(float(model.thresholds[0]))
    assert on_disk["training"]["data"]["splits"]["train"]["scans"] > 0
    assert on_disk["training"]["config_hash"] and on_disk["training"]["validation"]["best"] > 0.5
    assert set(on_disk["files"]) == set(formats) == set(card["files"])


def test_temperature_scaling_keeps_ranking_and_decisions(trained):
    ckpt = trained["run"] / "checkpoints" / "model.ckpt"
    common = [o for o in RUN_OVERRIDES if o.startswith("data.")] + [f"ckpt_path={ckpt}"]
    cfg = compose_config(
        "evaluate",
        trained["tmp"] / "ts",
        [*common, "evaluation.n_bootstrap=50", "evaluation.temperature_scaling=true"],
    )
    scaled = evaluate(cfg)["outputs"]["opacity"]
    plain = json.loads((trained["run"] / "evaluation" / "metrics.json").read_text())
    plain = plain["outputs"]["opacity"]
    assert scaled["threshold_rule"]["temperature"] > 0
    assert scaled["metrics"]["roc_auc"] == pytest.approx(plain["metrics"]["roc_auc"])
    assert scaled["metrics"]["confusion_matrix"] == plain["metrics"]["confusion_matrix"]
    assert scaled["metrics"]["brier"] != pytest.approx(plain["metrics"]["brier"])


def test_predict_on_real_corrupt_dicoms(trained, shared_data, tmp_path):
    import shutil

    dicom = shared_data / "dicom"
    folder = tmp_path / "mixed"
    folder.mkdir()
    for rel in [
        "xray/pylibjpeg-data/RG2_JPLY.dcm",
        "edge_cases/dcmfx-pydicom/JPEG-lossy.dcm",
        "xray/highdicom/dx_image.dcm",
        "xray/pylibjpeg-data/RG2_JPLY_fixed.dcm",
    ]:
        shutil.copy(dicom / rel, folder / Path(rel).name)
    # in this process (the command line's exit status 2 is tested above)
    from chestxr.predict import predict
    from chestxr.utils.exits import EXIT_PARTIAL, exit_status

    ckpt = trained["run"] / "checkpoints" / "model.ckpt"
    cfg = compose_config(
        "predict", tmp_path, [f"ckpt_path={ckpt}", f"input={folder}", "include_paths=true"]
    )
    result = predict(cfg)
    assert exit_status([result], done="predicted", failed="unreadable") == EXIT_PARTIAL
    out = Path(cfg.paths.output_dir)
    good = sorted(Path(r["file"]).name for r in read_csv(out / "predictions.csv"))
    bad = {Path(r["file"]).name: r["reason"] for r in read_csv(out / "unreadable.csv")}
    assert good == ["RG2_JPLY_fixed.dcm", "dx_image.dcm"]
    assert set(bad) == {"RG2_JPLY.dcm", "JPEG-lossy.dcm"}
    assert all("could not be decoded" in reason for reason in bad.values())


def test_checkpoint_from_before_binning_reads_scans_without_it(trained, tmp_path):
    """A checkpoint whose preprocessing predates ``binning`` is read as it was trained."""
    path = trained["run"] / "checkpoints" / "model.ckpt"
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["hyper_parameters"]["preprocess"]["binning"] is True  # the current default
    del ckpt["hyper_parameters"]["preprocess"]["binning"]
    torch.save(ckpt, tmp_path / "old.ckpt")
    assert load_model(tmp_path / "old.ckpt").hparams.preprocess["binning"] is False
    assert load_model(path).hparams.preprocess["binning"] is True
