"""The data-set audit on small generated data sets: each finding kind, and the exit status."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from chestxr.audit import audit
from chestxr.data.audit import SCHEMA, audit_manifest, exit_status, hamming_groups
from chestxr.data.manifest import load_manifest
from tests.conftest import REPO_ROOT, compose_config
from tests.helpers.dicom import write_radiograph

CLASSES = ("NORMAL", "PNEUMONIA")


def smooth_image(seed: int, size: tuple[int, int] = (48, 40)) -> np.ndarray:
    """A distinct, smooth 8-bit image (width, height): random 6 x 6 field upsampled."""
    field = np.random.default_rng(seed).uniform(30, 220, (6, 6)).astype(np.float32)
    up = Image.fromarray(field, mode="F").resize(size, Image.Resampling.BICUBIC)
    return np.clip(np.asarray(up), 0, 255).astype(np.uint8)


def write_image(path: Path, pixels: np.ndarray, mode: str = "L", **save: object) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(pixels, mode="L")
    (img.convert(mode) if mode != "L" else img).save(path, **save)
    return path.name


def write_manifest(folder: Path, rows: list[dict[str, str]]) -> Path:
    path = folder / "labels.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "patient_id", "split"])
        writer.writeheader()
        for row in rows:
            writer.writerow({"split": "", **row})
    return path


def run_audit(tmp: Path, manifest: Path, *overrides: str, classes=CLASSES) -> dict:
    cfg = compose_config(
        "audit",
        tmp,
        [
            "data=manifest",
            f"data.manifest={manifest}",
            f"data.classes=[{','.join(classes)}]",
            "audit.workers=0",
            *overrides,
        ],
    )
    return audit(cfg)


def dicom_file(
    path: Path, pixels: np.ndarray, *, modality: str, photometric: str, **elements: object
) -> Path:
    """A minimal 12-bit radiograph DICOM."""
    return write_radiograph(
        path,
        pixels.astype(np.uint16),
        bits_stored=12,
        modality=modality,
        photometric=photometric,
        **elements,
    )


# --- finding kinds -------------------------------------------------------------------------------


def test_unreadable_files_are_reported_with_the_readers_reason(tmp_path):
    data = tmp_path / "data"
    rows = [
        {"path": write_image(data / f"ok{i}.png", smooth_image(i)), "label": CLASSES[i % 2]}
        for i in range(4)
    ]
    full = dicom_file(
        data / "truncated.dcm",
        (smooth_image(9).astype(np.uint16) * 16),
        modality="DX",
        photometric="MONOCHROME2",
    )
    full.write_bytes(full.read_bytes()[: full.stat().st_size - 1500])  # pixel data cut short
    (data / "notes.png").write_text("this is a text file, not an image\n")
    rows += [
        {"path": "truncated.dcm", "label": "NORMAL"},
        {"path": "notes.png", "label": "PNEUMONIA"},
        {"path": "missing.png", "label": "NORMAL"},
    ]
    for i, row in enumerate(rows):
        row["patient_id"] = f"p{i}"
    report = run_audit(tmp_path, write_manifest(data, rows))

    reasons = {u["path"]: u["reason"] for u in report["unreadable"]}
    assert set(reasons) == {"truncated.dcm", "notes.png", "missing.png"}
    assert "not a DICOM, PNG or JPEG image" in reasons["notes.png"]
    assert reasons["missing.png"] == "file not found"
    assert reasons["truncated.dcm"]  # the decoder's words
    assert report["findings"]["unreadable"] == 3
    assert report["failed"] == ["unreadable"] and exit_status(report) == 1
    # the report is on disk as documented
    run = tmp_path / "run"
    on_disk = json.loads((run / "audit.json").read_text())
    assert on_disk["schema"] == SCHEMA and on_disk["findings"] == report["findings"]
    assert "truncated.dcm" in (run / "audit.txt").read_text()


def test_exact_and_near_duplicates_are_flagged_across_splits(tmp_path):
    data = tmp_path / "data"
    a, b, c = smooth_image(1), smooth_image(2), smooth_image(3)
    brighter = np.clip(b.astype(int) + 12, 0, 255).astype(np.uint8)
    rows = [
        {"path": write_image(data / "a.png", a), "split": "train"},
        {"path": write_image(data / "a_copy.png", a), "split": "test"},  # same bytes
        {"path": write_image(data / "b.png", b), "split": "train"},
        {"path": write_image(data / "b2.jpg", brighter, quality=90), "split": "test"},
        {"path": write_image(data / "c.png", c), "split": "train"},
        {"path": write_image(data / "c_copy.png", c), "split": "train"},  # same split: no leak
    ]
    rows += [
        {"path": write_image(data / f"x{i}.png", smooth_image(10 + i)), "split": s}
        for i, s in enumerate(["train", "train", "test", "test"])
    ]
    for i, row in enumerate(rows):
        row.update(patient_id=f"p{i}", label=CLASSES[i % 2])
    report = run_audit(tmp_path, write_manifest(data, rows))

    exact = {frozenset(m["path"] for m in g["members"]): g for g in report["exact_duplicates"]}
    assert set(exact) == {frozenset({"a.png", "a_copy.png"}), frozenset({"c.png", "c_copy.png"})}
    assert exact[frozenset({"a.png", "a_copy.png"})]["across_splits"] is True
    assert exact[frozenset({"c.png", "c_copy.png"})]["across_splits"] is False
    near = report["near_duplicates"]
    assert [sorted(m["path"] for m in g["members"]) for g in near] == [["b.png", "b2.jpg"]]
    assert near[0]["across_splits"] is True
    assert {m["split"] for m in near[0]["members"]} == {"train", "test"}
    assert report["findings"]["duplicate_across_splits"] == 1
    assert report["findings"]["near_duplicate_across_splits"] == 1
    assert report["failed"] == ["duplicate_across_splits"]


def test_patient_in_two_given_splits_is_reported_instead_of_raised(tmp_path):
    data = tmp_path / "data"
    rows = []
    for i in range(10):
        split = {0: "train", 1: "test", 2: "val"}.get(i, "")
        pid = "leaky" if i < 2 else f"p{i}"
        rows.append(
            {
                "path": write_image(data / f"{i}.png", smooth_image(i)),
                "label": CLASSES[i % 2],
                "patient_id": pid,
                "split": split,
            }
        )
    report = run_audit(tmp_path, write_manifest(data, rows))

    assert report["patient_leaks"] == [{"patient_id": "leaky", "rows": {"test": 1, "train": 1}}]
    assert report["findings"]["patient_leak"] == 1
    assert "patient_leak" in report["failed"]
    # every row still has a split, and the leaking rows keep the given ones
    assert sum(s["images"] for s in report["splits"].values()) == 10
    assert report["splits"]["test"]["given"] == 1 and report["splits"]["val"]["given"] == 1


def test_label_counts_per_split_and_a_sample_of_files(tmp_path):
    data = tmp_path / "data"
    plan = [("train", "NORMAL")] * 3 + [("train", "PNEUMONIA")] * 2 + [("train", "")]
    plan += [("val", "PNEUMONIA")] + [("test", "NORMAL")] + [("test", "PNEUMONIA")] * 2
    rows = [
        {
            "path": write_image(data / f"{i}.png", smooth_image(i)),
            "label": label,
            "patient_id": f"p{i}",
            "split": split,
        }
        for i, (split, label) in enumerate(plan)
    ]
    manifest = write_manifest(data, rows)
    report = run_audit(tmp_path, manifest)

    counts = report["label_counts"]
    assert counts["train"]["PNEUMONIA"] == {"positive": 2, "negative": 3, "unknown": 1}
    assert counts["val"]["PNEUMONIA"] == {"positive": 1, "negative": 0, "unknown": 0}
    assert counts["test"]["PNEUMONIA"] == {"positive": 2, "negative": 1, "unknown": 0}
    assert counts["all"]["PNEUMONIA"] == {"positive": 5, "negative": 4, "unknown": 1}
    assert report["splits"]["train"] == {"images": 6, "patients": 6, "given": 6}
    assert report["files_read"] == 10 and not report["sampled"]

    sampled = run_audit(tmp_path / "sampled", manifest, "audit.max_files=4")
    assert sampled["files_read"] == 4 and sampled["sampled"]
    assert sampled["label_counts"] == counts  # counts and splits still cover every row


def test_multilabel_label_counts_are_per_output(tmp_path):
    data = tmp_path / "data"
    labels = ["effusion|opacity", "opacity", "No Finding", "effusion", ""]
    rows = [
        {"path": write_image(data / f"{i}.png", smooth_image(i)), "label": lab, "split": "train"}
        for i, lab in enumerate(labels)
    ]
    for i, row in enumerate(rows):
        row["patient_id"] = f"p{i}"
    report = run_audit(
        tmp_path,
        write_manifest(data, rows),
        "data.task=multilabel",
        classes=("opacity", "effusion"),
    )
    train = report["label_counts"]["train"]
    assert train["opacity"] == {"positive": 2, "negative": 2, "unknown": 1}
    assert train["effusion"] == {"positive": 2, "negative": 2, "unknown": 1}


def sized_rows(data: Path, sizes: dict[str, list[tuple[int, int]]]) -> list[dict[str, str]]:
    rows = []
    for label, shapes in sizes.items():
        for j, (w, h) in enumerate(shapes):
            i = len(rows)
            path = write_image(data / f"{label}_{j}.png", smooth_image(i, (w, h)))
            rows.append({"path": path, "label": label, "patient_id": f"p{i}"})
    return rows


def test_class_dependent_aspect_ratio_is_a_shortcut(tmp_path):
    rng = np.random.default_rng(0)
    heights = rng.integers(40, 56, size=(2, 12))
    sizes = {
        "NORMAL": [(round(1.2 * h), int(h)) for h in heights[0]],
        "PNEUMONIA": [(round(1.5 * h), int(h)) for h in heights[1]],
    }
    data = tmp_path / "data"
    report = run_audit(tmp_path, write_manifest(data, sized_rows(data, sizes)))

    warned = {s["property"]: s for s in report["shortcuts"]}
    assert "aspect_ratio" in warned
    check = next(c for c in report["properties"] if c["property"] == "aspect_ratio")
    assert check["separation"] == 1.0
    assert check["per_class"]["NORMAL"]["median"] == pytest.approx(1.2, abs=0.03)
    assert check["per_class"]["PNEUMONIA"]["median"] == pytest.approx(1.5, abs=0.03)
    message = warned["aspect_ratio"]["message"]
    assert "NORMAL (median 1.2" in message and "PNEUMONIA (median 1.5" in message
    assert "resize=pad" in message  # the data config's default policy
    assert report["findings"]["shortcut"] == len(report["shortcuts"]) >= 1
    assert report["failed"] == []  # shortcuts warn; they are not in the default fail_on


def test_class_independent_sizes_give_no_shortcut_warning(tmp_path):
    shapes = [(w, h) for w in (40, 48, 60) for h in (36, 44, 52)]
    sizes = {"NORMAL": shapes, "PNEUMONIA": shapes[::-1]}
    data = tmp_path / "data"
    report = run_audit(tmp_path, write_manifest(data, sized_rows(data, sizes)))

    assert report["shortcuts"] == [] and report["findings"]["shortcut"] == 0
    by_prop = {c["property"]: c for c in report["properties"]}
    assert by_prop["aspect_ratio"]["separation"] == pytest.approx(0.5)
    assert by_prop["colour_mode"]["per_class"]["NORMAL"] == {"L": 9}
    assert report["failed"] == [] and exit_status(report) == 0


@pytest.mark.parametrize(("n_each", "n_rgb"), [(12, 6), (40, 12)])
def test_rgb_files_of_one_class_are_a_colour_mode_shortcut(tmp_path, n_each, n_rgb):
    """6 RGB of 12 positives: AUC 0.75; 12 of 40: AUC 0.65, but a one-class category."""
    data = tmp_path / "data"
    rows = []
    for label in CLASSES:
        for j in range(n_each):
            i = len(rows)
            mode = "RGB" if label == "PNEUMONIA" and j < n_rgb else "L"
            path = write_image(data / f"{label}_{j}.png", smooth_image(i, (32, 32)), mode=mode)
            rows.append({"path": path, "label": label, "patient_id": f"p{i}"})
    report = run_audit(tmp_path, write_manifest(data, rows))

    assert report["files"]["mode"] == {"L": 2 * n_each - n_rgb, "RGB": n_rgb}
    warned = {s["property"]: s for s in report["shortcuts"]}
    assert set(warned) == {"colour_mode"}
    check = next(c for c in report["properties"] if c["property"] == "colour_mode")
    assert check["per_class"]["PNEUMONIA"] == {"L": n_each - n_rgb, "RGB": n_rgb}
    assert check["auc"] == pytest.approx(0.5 + 0.5 * n_rgb / n_each)
    assert "RGB" in warned["colour_mode"]["message"]


def test_dicom_header_summary_counts(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    pixels = smooth_image(0, (24, 20)).astype(np.uint16) * 16
    dicom_file(
        data / "a.dcm",
        pixels,
        modality="DX",
        photometric="MONOCHROME2",
        ViewPosition="PA",
        PixelSpacing=[0.1, 0.1],
        Manufacturer="Acme",
    )
    dicom_file(
        data / "b.dcm",
        pixels[::-1],
        modality="DX",
        photometric="MONOCHROME1",
        ViewPosition="AP",
        ImagerPixelSpacing=[0.15, 0.2],
        Manufacturer="Acme",
    )
    c = dicom_file(data / "c.dcm", pixels.T.copy(), modality="CR", photometric="MONOCHROME2")
    from pydicom import dcmread

    ds = dcmread(c)
    ds.compress(RLELossless, encoding_plugin="pydicom")
    ds.save_as(c, enforce_file_format=True)
    rows = [
        {"path": name, "label": label, "patient_id": f"p{i}"}
        for i, (name, label) in enumerate(
            [("a.dcm", "NORMAL"), ("b.dcm", "PNEUMONIA"), ("c.dcm", "NORMAL")]
        )
    ]
    report = run_audit(tmp_path, write_manifest(data, rows))

    dicom = report["dicom"]
    assert report["files"]["format"] == {"dicom": 3}
    assert dicom["files"] == 3
    assert dicom["modality"] == {"DX": 2, "CR": 1}
    assert dicom["photometric"] == {"MONOCHROME2": 2, "MONOCHROME1": 1}
    assert dicom["view_position"] == {"(none)": 1, "AP": 1, "PA": 1}
    assert dicom["manufacturer"] == {"Acme": 2, "(none)": 1}
    assert dicom["bits_stored"] == {"12": 3}
    assert set(dicom["transfer_syntax"]) == {
        f"Explicit VR Little Endian ({ExplicitVRLittleEndian})",
        f"RLE Lossless ({RLELossless})",
    }
    assert dicom["pixel_spacing_mm"] == {"row": [0.1, 0.15], "column": [0.1, 0.2], "missing": 1}
    assert report["unreadable"] == []


# --- pieces --------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_bits", [0, 2, 5])
def test_hamming_groups_match_brute_force(max_bits):
    rng = np.random.default_rng(max_bits)
    base = rng.random((60, 64)) > 0.5
    copies = base[:20].copy()
    for row in copies:  # planted near copies, 0..max_bits + 2 bits away
        flip = rng.choice(64, size=rng.integers(0, max_bits + 3), replace=False)
        row[flip] = ~row[flip]
    bits = np.concatenate([base, copies])
    dist = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    # brute force: connected components of the "within max_bits" graph
    label = np.arange(len(bits))
    for _ in range(len(bits)):
        label = np.array([label[dist[i] <= max_bits].min() for i in range(len(bits))])
    expected = {frozenset(np.flatnonzero(label == v).tolist()) for v in np.unique(label)}
    expected = {g for g in expected if len(g) > 1}
    assert {frozenset(g) for g in hamming_groups(bits, max_bits)} == expected
    assert expected  # the planted copies make some groups


def test_unknown_fail_on_kind_is_refused(tmp_path):
    data = tmp_path / "data"
    path = write_image(data / "a.png", smooth_image(0))
    rows = [{"path": path, "label": "NORMAL", "patient_id": "p"}]
    manifest = load_manifest(write_manifest(data, rows), task="binary", classes=CLASSES)
    with pytest.raises(ValueError, match="leaks"):
        audit_manifest(manifest, task="binary", classes=CLASSES, fail_on=["leaks"], workers=0)


def test_command_exit_status_is_1_on_a_fail_on_finding(tmp_path):
    data = tmp_path / "data"
    rows = [
        {
            "path": write_image(data / f"{i}.png", smooth_image(i)),
            "label": CLASSES[i % 2],
            "patient_id": "same" if i < 2 else f"p{i}",
            "split": ["train", "test"][i] if i < 2 else "",
        }
        for i in range(8)
    ]
    manifest = write_manifest(data, rows)
    run = tmp_path / "run"
    env = {**os.environ, "CHESTXR_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "chestxr.audit",
            "data=manifest",
            f"data.manifest={manifest}",
            "data.classes=[NORMAL,PNEUMONIA]",
            f"hydra.run.dir={run}",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Result: FAIL (patient_leak)" in proc.stdout
    report = json.loads((run / "audit.json").read_text())
    assert report["failed"] == ["patient_leak"] and report["files_read"] == 8
    assert proc.stdout.endswith((run / "audit.txt").read_text())  # after Hydra's log lines


# --- the real Kermany set ------------------------------------------------------------------------


@pytest.mark.shared_data
def test_kermany_audit_finds_rgb_files_and_the_aspect_ratio_shortcut(shared_data, tmp_path):
    manifest = shared_data / "kermany_pneumonia" / "labels.csv"
    report = run_audit(tmp_path, manifest, "audit.workers=2")

    assert report["files"]["mode"].get("RGB", 0) > 0
    warned = {s["property"]: s for s in report["shortcuts"]}
    assert {"aspect_ratio", "colour_mode"} <= set(warned)
    assert "RGB" in warned["colour_mode"]["message"]
    aspect = next(c for c in report["properties"] if c["property"] == "aspect_ratio")
    assert aspect["per_class"]["NORMAL"]["median"] == pytest.approx(1.2, abs=0.1)
    assert aspect["per_class"]["PNEUMONIA"]["median"] == pytest.approx(1.5, abs=0.1)
    assert aspect["separation"] > 0.8
