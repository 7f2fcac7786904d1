"""``chestxr.predict`` on small files written here: identifiers, inputs, exit statuses."""

from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path

import lightning
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from chestxr.data.inputs import find_inputs
from chestxr.models.module import ChestXRClassifier
from chestxr.predict import cli, predict
from tests.conftest import compose_config

# What must never reach predict's outputs (Secondary Captures aside).
PATIENT_NAME, PATIENT_ID, FILE_STEM = "Quixote^Zebedee", "PIDQX9183", "Zebedee_Quixote_scan"
SECRETS = ("Quixote", "Zebedee", PATIENT_ID, FILE_STEM)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A chestxr checkpoint (untrained weights, an operating point) in Lightning's format."""
    torch.manual_seed(0)
    model = ChestXRClassifier(
        task="binary",
        classes=["normal", "opacity"],
        preprocess={"image_size": 64, "resize": "pad", "voi": "header", "binning": True},
        optimizer={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3},
        channels_last=False,
    )
    model.thresholds.fill_(0.5)
    path = tmp_path_factory.mktemp("model") / "model.ckpt"
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": lightning.__version__,
        },
        path,
    )
    return path


def dicom(path: Path, seed: int, *, preamble: bool = True) -> Path:
    """A small DX DICOM of a distinctive patient; without preamble and file meta when asked."""
    pixels = np.random.default_rng(seed).integers(0, 4000, (80, 72), dtype=np.uint16)
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.SamplesPerPixel = 1
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    if preamble:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(path, enforce_file_format=True)
    else:
        pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True)
        assert path.read_bytes()[128:132] != b"DICM"
    return path


def run_cli(monkeypatch, ckpt: Path, source: Path, out: Path, *extra: str) -> int:
    """``python -m chestxr.predict ...`` in this process (its Hydra logging included)."""
    argv = ["predict", f"ckpt_path={ckpt}", f"input={source}", f"hydra.run.dir={out}", *extra]
    monkeypatch.setattr(sys, "argv", argv)
    return cli()


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_no_identifier_reaches_the_outputs(ckpt, tmp_path, monkeypatch):
    """Names, IDs and file names stay out of every output but the Secondary Captures; a DICOM
    without preamble gets its prediction and its Secondary Capture; loops are listed."""
    folder = tmp_path / "incoming"
    folder.mkdir()
    dicom(folder / f"{FILE_STEM}_1.dcm", 1)
    dicom(folder / f"{FILE_STEM}_2", 2, preamble=False)  # ACR-NEMA style, no extension
    Image.fromarray(np.full((40, 50), 90, np.uint8)).save(folder / f"{FILE_STEM}_3.png")
    (folder / f"{FILE_STEM}_bad.dcm").write_text("not an image")
    (folder / "loop").symlink_to(folder, target_is_directory=True)
    (folder / "self.dcm").symlink_to(folder / "self.dcm")
    out = tmp_path / "pred"
    assert run_cli(monkeypatch, ckpt, folder, out, "cams=true", "secondary_capture=true") == 2
    preds = read_csv(out / "predictions.csv")
    bad = read_csv(out / "unreadable.csv")
    assert len(preds) == 3 and len({r["scan_id"] for r in preds}) == 3
    assert all(0 <= float(r["prob_opacity"]) <= 1 for r in preds)
    written = sorted(r["secondary_capture"] for r in preds)
    assert written[0] == "not written: the source is not a DICOM file"  # the PNG
    assert all(w.endswith("_sc.dcm") for w in written[1:])
    reasons = sorted(r["reason"].split(":")[0] for r in bad)
    assert len(bad) == 3 and "symlink loop" in reasons, bad
    assert len(list((out / "cams").glob("scan-*.png"))) == 3
    outputs = [p for p in out.rglob("*") if p.is_file() and not p.name.endswith("_sc.dcm")]
    assert {p.name for p in outputs} >= {"predictions.csv", "unreadable.csv", "predict.log"}
    for path in outputs:
        data = path.read_bytes()
        for secret in SECRETS:
            assert secret.encode() not in data, f"{secret} in {path}"
    scs = sorted((out / "cams").glob("*_sc.dcm"))
    assert len(scs) == 2  # they keep the patient module: PACS files them by it
    assert all(str(pydicom.dcmread(p).PatientName) == PATIENT_NAME for p in scs)


def test_paths_only_when_asked(ckpt, tmp_path):
    source = dicom(tmp_path / f"{FILE_STEM}.dcm", 3)
    cfg = compose_config("predict", tmp_path, [f"ckpt_path={ckpt}", f"input={source}"])
    cfg.include_paths = True
    assert predict(cfg)["predicted"] == 1
    rows = read_csv(tmp_path / "run" / "predictions.csv")
    assert [r["file"] for r in rows] == [str(source)]


def test_single_image_file_is_predicted(ckpt, tmp_path):
    """``input=`` one image (was read as a CSV: UnicodeDecodeError)."""
    source = dicom(tmp_path / "one.dcm", 4)
    cfg = compose_config("predict", tmp_path, [f"ckpt_path={ckpt}", f"input={source}"])
    result = predict(cfg)
    assert result == {"predicted": 1, "unreadable": 0, "out_dir": str(tmp_path / "run")}
    (row,) = read_csv(tmp_path / "run" / "predictions.csv")
    assert row["scan_id"].startswith("scan-") and row["decision_opacity"] in ("0", "1")


def test_symlink_loops_are_listed_not_skipped(tmp_path):
    dicom(tmp_path / "a.dcm", 5)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "up").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "x.dcm").symlink_to(tmp_path / "x.dcm")
    (tmp_path / "gone.dcm").symlink_to(tmp_path / "missing.dcm")
    (tmp_path / "p").mkdir()
    (tmp_path / "q").mkdir()
    (tmp_path / "p" / "to_q").symlink_to(tmp_path / "q", target_is_directory=True)
    (tmp_path / "q" / "to_p").symlink_to(tmp_path / "p", target_is_directory=True)
    files, bad = find_inputs(tmp_path, [".dcm"])
    assert files == [tmp_path / "a.dcm"]
    assert {str(p.relative_to(tmp_path)): r.split(":")[0] for p, r in bad} == {
        "p/to_q/to_p": "symlink loop",
        "q/to_p/to_q": "symlink loop",
        "sub/up": "symlink loop",
        "x.dcm": "symlink loop",
        "gone.dcm": "dangling symlink",
    }


def test_exit_status_all_read_and_none_read(ckpt, tmp_path, monkeypatch):
    """0 when every file is predicted, 1 when none is (2, some unreadable, is tested above)."""
    good, broken = tmp_path / "good", tmp_path / "broken"
    good.mkdir()
    broken.mkdir()
    dicom(good / "a.dcm", 6)
    dicom(good / "b.dcm", 7)
    (broken / "c.dcm").write_bytes(b"\0" * 300)
    statuses = [
        run_cli(monkeypatch, ckpt, source, out)
        for source, out in ((good, tmp_path / "out0"), (broken, tmp_path / "out1"))
    ]
    assert statuses == [0, 1]
    assert len(read_csv(tmp_path / "out0" / "predictions.csv")) == 2
    assert read_csv(tmp_path / "out1" / "predictions.csv") == []
    assert len(read_csv(tmp_path / "out1" / "unreadable.csv")) == 1


def test_secondary_capture_failure_is_logged_without_the_path(ckpt, tmp_path, caplog):
    """A DICOM the Secondary Capture writer cannot reference (no StudyInstanceUID): its reason
    quotes the path, and the log line gets the scan id in its place, as unreadable.csv does."""
    from chestxr.inference import load_model, predict_files

    source = dicom(tmp_path / f"{FILE_STEM}.dcm", 4)
    ds = pydicom.dcmread(source)
    del ds.StudyInstanceUID
    ds.save_as(source)
    out = tmp_path / "pred"
    out.mkdir()
    model = load_model(ckpt, device=torch.device("cpu"))
    with caplog.at_level(logging.WARNING):
        predict_files(model, [source], out, cams=True, secondary_capture=True)
    [row] = read_csv(out / "predictions.csv")
    assert "lacks StudyInstanceUID" in row["secondary_capture"], row
    logged = [r.getMessage() for r in caplog.records if "not written" in r.getMessage()]
    assert logged and all(FILE_STEM not in m and row["scan_id"] in m for m in logged), logged
