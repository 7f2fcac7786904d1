"""Dataset adapters: small fixtures in each public set's exact layout -> canonical manifests."""

from __future__ import annotations

import csv
import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import config
from pydicom.dataelem import DataElement

from chestxr.data.adapters import chexpert, common, kermany, nih, rsna
from chestxr.data.manifest import load_manifest
from tests.helpers import dicom

PATIENT_AGE = 0x00101010


def _image_bytes(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (8, 8), color=128).save(buffer, format=fmt)
    return buffer.getvalue()


def _write_images(paths: list[Path], fmt: str) -> None:
    data = _image_bytes(fmt)
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _write_dicom(path: Path, sex: str, age: str, view: str) -> None:
    ds = dicom.radiograph(
        np.zeros((8, 6), np.uint8), modality="CR", PatientID=path.stem, PatientSex=sex
    )
    ds.ViewPosition = view
    # RSNA writes ages as plain numbers ("51"), not valid DICOM AS ("051Y"): keep that oddity.
    ds[PATIENT_AGE] = DataElement(PATIENT_AGE, "AS", age, validation_mode=config.IGNORE)
    dicom.write(ds, path)


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def _assert_patient_disjoint(rows: list[dict[str, str]]) -> None:
    split_of: dict[str, set[str]] = {}
    for row in rows:
        split_of.setdefault(row["patient_id"], set()).add(row["split"])
    straddling = {pid: s for pid, s in split_of.items() if len(s) > 1}
    assert not straddling


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------- common


def test_write_manifest_is_atomic_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "m.csv"
    rows = [{"path": "a.png", "label": "x", "patient_id": "p1", "split": ""}]
    common.write_manifest(rows, out, common.BASE_COLUMNS)
    assert _read(out) == (list(common.BASE_COLUMNS), rows)
    with pytest.raises(FileExistsError, match=r"m\.csv"):
        common.write_manifest(rows, out, common.BASE_COLUMNS)
    rows2 = [{**rows[0], "label": "y"}]
    common.write_manifest(rows2, out, common.BASE_COLUMNS, overwrite=True)
    assert _read(out)[1] == rows2
    # A failing write leaves the previous manifest intact and no temporary file behind.
    with pytest.raises(ValueError):
        common.write_manifest([{**rows[0], "bogus": 1}], out, common.BASE_COLUMNS, overwrite=True)
    assert _read(out)[1] == rows2
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.csv"]


@pytest.mark.parametrize(
    ("text", "years"), [("58", "58"), ("058Y", "58"), ("018M", "1.50"), ("", ""), ("old", "")]
)
def test_parse_age(text: str, years: str) -> None:
    assert common.parse_age(text) == years


def test_enforce_patient_disjoint_keeps_test_rows(caplog: pytest.LogCaptureFixture) -> None:
    rows = [
        {"patient_id": "a", "split": "train"},
        {"patient_id": "a", "split": "test"},
        {"patient_id": "b", "split": "train"},
    ]
    with caplog.at_level(logging.WARNING):
        kept = common.enforce_patient_disjoint(rows)
    assert kept == rows[1:]
    assert "a" in caplog.text


def test_read_csv_names_file_and_missing_column(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.csv"):
        common.read_csv(tmp_path / "nope.csv")
    _write_text(tmp_path / "a.csv", "x,y\n1,2\n")
    with pytest.raises(ValueError, match=r"a\.csv.*'z'"):
        common.read_csv(tmp_path / "a.csv", ("x", "z"))


def test_manifest_path_relative_only_under_the_manifest_folder(tmp_path: Path) -> None:
    out_dir = tmp_path / "data"
    assert common.manifest_path(out_dir / "a" / "b.png", out_dir) == "a/b.png"
    sibling = tmp_path / "data2" / "b.png"  # shares the folder's name as a prefix
    assert common.manifest_path(sibling, out_dir) == sibling.as_posix()


def test_module_command_line_runs(kermany_root: Path, tmp_path: Path, repo_root: Path) -> None:
    out = tmp_path / "cli" / "m.csv"
    command = [sys.executable, "-m", "chestxr.data.adapters.kermany", str(kermany_root), str(out)]
    result = subprocess.run(
        [*command, "--val-fraction", "0.25"],
        capture_output=True,
        text=True,
        check=False,
        cwd=repo_root,
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 37 rows" in result.stderr
    assert len(_read(out)[1]) == 37


# --------------------------------------------------------------------------- Kermany

KERMANY_FILES = {
    "train/NORMAL": [
        "IM-0115-0001.jpeg",
        "IM-0117-0001.jpeg",
        "IM-0119-0001.jpeg",
        "IM-0660-0001-0001.jpeg",
        "IM-0660-0001-0002.jpeg",
        "NORMAL2-IM-0381-0001.jpeg",
        "NORMAL2-IM-0382-0001.jpeg",
        "NORMAL2-IM-0383-0001.jpeg",
        "NORMAL2-IM-1094-0001-0001.jpeg",
    ],
    "train/PNEUMONIA": [
        "person1_bacteria_1.jpeg",
        "person1_bacteria_2.jpeg",
        "person2_bacteria_3.jpeg",
        "person3_virus_15.jpeg",
        "person3_virus_16.jpeg",
        "person4_bacteria_14.jpeg",
        "person5_virus_17.jpeg",
        "person6_bacteria_22.jpeg",
        "person7_virus_23.jpeg",
        "person8_bacteria_25.jpeg",
    ],
    # The Kaggle mirror's 16-image val: 8 per class; person3 also has train images.
    "val/NORMAL": [f"NORMAL2-IM-{1427 + i:04d}-0001.jpeg" for i in range(8)],
    "val/PNEUMONIA": [
        "person3_virus_20.jpeg",
        *(f"person{1946 + i}_bacteria_{4874 + i}.jpeg" for i in range(7)),
    ],
    "test/NORMAL": ["IM-0001-0001.jpeg", "NORMAL2-IM-0007-0001.jpeg"],
    # person1 also has official train images: its test row must stay, its train rows go.
    "test/PNEUMONIA": ["person100_bacteria_475.jpeg", "person1_virus_6.jpeg"],
}


@pytest.fixture
def kermany_root(tmp_path: Path) -> Path:
    root = tmp_path / "chest_xray"
    _write_images(
        [root / folder / name for folder, names in KERMANY_FILES.items() for name in names],
        "JPEG",
    )
    _write_text(root / "train" / "NORMAL" / ".DS_Store", "junk")
    return root


@pytest.mark.parametrize(
    ("name", "patient", "subtype"),
    [
        ("person1_bacteria_1.jpeg", "person1", "bacteria"),
        ("person1438_virus_2450.jpeg", "person1438", "virus"),
        ("IM-0115-0001.jpeg", "IM-0115", "normal"),
        ("IM-0660-0001-0001.jpeg", "IM-0660", "normal"),
        ("NORMAL2-IM-0381-0001.jpeg", "NORMAL2-IM-0381", "normal"),
    ],
)
def test_kermany_file_names(name: str, patient: str, subtype: str) -> None:
    assert kermany.parse_file_name(name) == (patient, subtype)


def test_kermany_manifest(kermany_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = kermany_root / "manifest.csv"
    with caplog.at_level(logging.WARNING):
        kermany.build_manifest(kermany_root, out, val_fraction=0.25, seed=0)
    columns, rows = _read(out)
    assert columns == ["path", "label", "patient_id", "split", "subtype", "orig_split"]
    n_images = sum(len(names) for names in KERMANY_FILES.values())
    assert len(rows) == n_images - 2  # person1's two official-train images dropped
    assert "person1" in caplog.text

    by_name = {Path(row["path"]).name: row for row in rows}
    assert "person1_bacteria_1.jpeg" not in by_name
    assert by_name["person1_virus_6.jpeg"]["split"] == "test"
    assert by_name["IM-0660-0001-0002.jpeg"]["patient_id"] == "IM-0660"
    assert by_name["NORMAL2-IM-1094-0001-0001.jpeg"]["patient_id"] == "NORMAL2-IM-1094"
    assert by_name["person3_virus_20.jpeg"]["subtype"] == "virus"
    for row in rows:
        assert (kermany_root / row["path"]).is_file()  # relative to the manifest's folder
        folder_split, folder_label = Path(row["path"]).parts[:2]
        assert row["label"] == folder_label
        assert row["orig_split"] == folder_split
        assert row["patient_id"] == kermany.parse_file_name(Path(row["path"]).name)[0]
        assert (row["split"] == "test") == (folder_split == "test")
    # The 16 official val images joined train before the carving.
    assert {by_name[n]["split"] for n in KERMANY_FILES["val/NORMAL"]} <= {"train", "val"}
    # A stratified val: both classes present, train keeps both.
    for split in ("train", "val", "test"):
        assert {r["label"] for r in rows if r["split"] == split} == {"NORMAL", "PNEUMONIA"}
    _assert_patient_disjoint(rows)

    manifest = load_manifest(out, task="binary", classes=["NORMAL", "PNEUMONIA"])
    assert manifest.targets[:, 0].tolist() == [float(r["label"] == "PNEUMONIA") for r in rows]


def test_kermany_seeded_and_no_silent_overwrite(kermany_root: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "manifests"  # outside the data folder: paths are absolute
    first = kermany.build_manifest(kermany_root, out_dir / "a.csv", val_fraction=0.25, seed=3)
    with pytest.raises(FileExistsError, match=r"a\.csv"):
        kermany.build_manifest(kermany_root, first, val_fraction=0.25, seed=3)
    argv = [str(kermany_root), str(out_dir / "b.csv"), "--val-fraction", "0.25", "--seed", "3"]
    assert kermany.main(argv) == 0
    assert first.read_bytes() == (out_dir / "b.csv").read_bytes()
    assert all(Path(row["path"]).is_absolute() for row in _read(first)[1])
    kermany.build_manifest(kermany_root, first, val_fraction=0.0, overwrite=True)
    assert "val" not in {row["split"] for row in _read(first)[1]}


def test_kermany_errors(kermany_root: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="chest_xray"):  # ROOT one level too high
        kermany.build_manifest(tmp_path, tmp_path / "m.csv")
    _write_images([kermany_root / "train" / "NORMAL" / "person9_virus_1.jpeg"], "JPEG")
    with pytest.raises(ValueError, match=r"person9_virus_1\.jpeg"):
        kermany.build_manifest(kermany_root, tmp_path / "m.csv")
    (kermany_root / "train" / "NORMAL" / "person9_virus_1.jpeg").unlink()
    _write_images([kermany_root / "test" / "NORMAL" / "scan_final.jpeg"], "JPEG")
    with pytest.raises(ValueError, match="scan_final"):
        kermany.build_manifest(kermany_root, tmp_path / "m.csv")
    assert not (tmp_path / "m.csv").exists()


@pytest.mark.shared_data
def test_kermany_file_names_match_shared_labels(shared_data: Path) -> None:
    _, rows = common.read_csv(shared_data / "kermany_pneumonia" / "labels.csv")
    for row in rows:
        assert kermany.parse_file_name(Path(row["path"]).name) == (
            row["patient_id"],
            row["subtype"],
        )


# --------------------------------------------------------------------------- RSNA

RSNA_IDS = {
    "normal": "0004cfab-14fd-4e49-80ba-63a80b6bddd6",
    "not_normal": "00313ee0-9eaa-42f4-b0ab-c148ed3241cd",
    "two_boxes": "00436515-870c-4b36-a041-de91049b9ab4",
    "one_box": "00704310-78a8-4b38-8475-49f4573b2dbb",
}
RSNA_LABELS = (
    "patientId,x,y,width,height,Target\n"
    f"{RSNA_IDS['normal']},,,,,0\n"
    f"{RSNA_IDS['not_normal']},,,,,0\n"
    f"{RSNA_IDS['two_boxes']},264.0,152.0,213.0,379.0,1\n"
    f"{RSNA_IDS['two_boxes']},562.0,152.0,256.0,453.0,1\n"
    f"{RSNA_IDS['one_box']},323.0,577.0,160.5,104.0,1\n"
)
RSNA_DETAILED = (
    "patientId,class\n"
    f"{RSNA_IDS['normal']},Normal\n"
    f"{RSNA_IDS['not_normal']},No Lung Opacity / Not Normal\n"
    f"{RSNA_IDS['two_boxes']},Lung Opacity\n"
    f"{RSNA_IDS['two_boxes']},Lung Opacity\n"
    f"{RSNA_IDS['one_box']},Lung Opacity\n"
)


@pytest.fixture
def rsna_root(tmp_path: Path) -> Path:
    root = tmp_path / "rsna-pneumonia-detection-challenge"
    _write_text(root / rsna.LABELS_CSV, RSNA_LABELS)
    _write_text(root / rsna.DETAILED_CSV, RSNA_DETAILED)
    for i, pid in enumerate(RSNA_IDS.values()):
        _write_dicom(root / rsna.IMAGES_DIR / f"{pid}.dcm", "MF"[i % 2], str(40 + i), "PA")
    return root


def test_rsna_manifest(rsna_root: Path) -> None:
    out = rsna_root / "manifest.csv"
    rsna.build_manifest(rsna_root, out)
    columns, rows = _read(out)
    assert columns == [
        "path", "label", "patient_id", "split", "boxes", "class_detail",
        "view", "sex", "age", "orig_width", "orig_height",
    ]  # fmt: skip
    assert len(rows) == 4  # one row per image, not per box
    by_id = {row["patient_id"]: row for row in rows}
    assert set(by_id) == set(RSNA_IDS.values())
    for key, label in [("normal", "Normal"), ("not_normal", "Normal"), ("one_box", "Lung Opacity")]:
        assert by_id[RSNA_IDS[key]]["label"] == label
    assert by_id[RSNA_IDS["not_normal"]]["class_detail"] == "No Lung Opacity / Not Normal"
    assert json.loads(by_id[RSNA_IDS["normal"]]["boxes"]) == []
    assert json.loads(by_id[RSNA_IDS["two_boxes"]]["boxes"]) == [
        {"x": 264, "y": 152, "width": 213, "height": 379, "label": "Lung Opacity"},
        {"x": 562, "y": 152, "width": 256, "height": 453, "label": "Lung Opacity"},
    ]
    assert json.loads(by_id[RSNA_IDS["one_box"]]["boxes"])[0]["width"] == 160.5
    first = by_id[RSNA_IDS["normal"]]
    assert (first["view"], first["sex"], first["age"]) == ("PA", "M", "40")
    assert (first["orig_width"], first["orig_height"]) == ("6", "8")
    assert {row["split"] for row in rows} == {""}
    assert all((rsna_root / row["path"]).is_file() for row in rows)
    manifest = load_manifest(out, task="binary", classes=list(rsna.CLASSES))
    assert manifest.targets[:, 0].tolist() == [float(r["label"] == "Lung Opacity") for r in rows]


def test_rsna_missing_images_and_bad_rows(rsna_root: Path, tmp_path: Path) -> None:
    (rsna_root / rsna.IMAGES_DIR / f"{RSNA_IDS['one_box']}.dcm").unlink()
    with pytest.raises(FileNotFoundError, match=RSNA_IDS["one_box"]):
        rsna.build_manifest(rsna_root, tmp_path / "m.csv")
    assert rsna.main([str(rsna_root), str(tmp_path / "m.csv"), "--missing", "drop",
                      "--no-dicom-metadata"]) == 0  # fmt: skip
    columns, rows = _read(tmp_path / "m.csv")
    assert "view" not in columns
    assert RSNA_IDS["one_box"] not in {row["patient_id"] for row in rows}

    _write_text(rsna_root / rsna.LABELS_CSV, RSNA_LABELS + f"{RSNA_IDS['normal']},1,2,3,,1\n")
    with pytest.raises(ValueError, match="line 7: Target 1 without a complete box"):
        rsna.build_manifest(rsna_root, tmp_path / "n.csv", missing="drop")
    _write_text(rsna_root / rsna.LABELS_CSV, RSNA_LABELS.replace("Target", "Label"))
    with pytest.raises(ValueError, match=r"stage_2_train_labels\.csv.*'Target'"):
        rsna.build_manifest(rsna_root, tmp_path / "n.csv", missing="drop")


# --------------------------------------------------------------------------- NIH

NIH_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n"
)
# (image, findings, patient, age); patients 1-6 are in train_val_list, 7-8 in test_list.
NIH_ROWS = [
    ("00000001_000.png", "Cardiomegaly", 1, "58"),
    ("00000001_001.png", "Cardiomegaly|Emphysema", 1, "58"),
    ("00000002_000.png", "No Finding", 2, "081Y"),
    ("00000003_000.png", "Mass|Effusion|Infiltration", 3, "74"),
    ("00000003_001.png", "Hernia", 3, "74"),
    ("00000004_000.png", "Pleural_Thickening|Nodule", 4, "45"),
    ("00000005_000.png", "No Finding", 5, "30"),
    ("00000006_000.png", "Pneumonia|Consolidation|Edema|Fibrosis", 6, "61"),
    ("00000007_000.png", "Atelectasis|Pneumothorax", 7, "22"),
    ("00000008_000.png", "No Finding", 8, "33"),
    ("00000008_001.png", "Infiltration", 8, "33"),
]
NIH_BBOX = (
    "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
    "00000003_000.png,Infiltrate,225.084745762712,547.019216763771,86.7796610169491,79.1864406779661,,,\n"
    "00000003_000.png,Mass,10,20,30,40,,,\n"
    "00000007_000.png,Atelectasis,1.5,2.5,3.5,4.5,,,\n"
    "00099999_000.png,Nodule,1,2,3,4,,,\n"
)  # fmt: skip


def _nih_entry(rows: list[tuple[str, str, int, str]]) -> str:
    lines = [
        f"{name},{findings},{i},{pid},{age},{'MF'[pid % 2]},{'AP' if pid % 3 else 'PA'},"
        "2500,2048,0.143,0.143,\n"
        for i, (name, findings, pid, age) in enumerate(rows)
    ]
    return NIH_HEADER + "".join(lines)


@pytest.fixture
def nih_root(tmp_path: Path) -> Path:
    root = tmp_path / "nih-chest-xrays"
    _write_text(root / "Data_Entry_2017.csv", _nih_entry(NIH_ROWS))
    names = [name for name, *_ in NIH_ROWS]
    # Kaggle layout: images_001/images/, images_002/images/; one image in a flat images_003/.
    _write_images([root / "images_001" / "images" / n for n in names[:5]], "PNG")
    _write_images([root / "images_002" / "images" / n for n in names[5:-1]], "PNG")
    _write_images([root / "images_003" / names[-1]], "PNG")
    test = [name for name, _, pid, _ in NIH_ROWS if pid >= 7]
    _write_text(root / "train_val_list.txt", "\n".join(n for n in names if n not in test) + "\n")
    _write_text(root / "test_list.txt", "\n".join(test) + "\n")
    _write_text(root / "BBox_List_2017.csv", NIH_BBOX)
    return root


def test_nih_manifest(nih_root: Path) -> None:
    out = nih_root / "manifest.csv"
    nih.build_manifest(nih_root, out, val_fraction=0.34, seed=0)
    columns, rows = _read(out)
    assert columns == [
        "path", "label", "patient_id", "split", "boxes", *nih.NIH_FINDINGS, "follow_up", "age",
        "sex", "view", "orig_width", "orig_height", "pixel_spacing_x", "pixel_spacing_y",
    ]  # fmt: skip
    assert len(nih.NIH_FINDINGS) == 14
    assert [Path(row["path"]).name for row in rows] == [name for name, *_ in NIH_ROWS]
    by_name = {Path(row["path"]).name: row for row in rows}
    for name, findings, pid, _ in NIH_ROWS:
        row = by_name[name]
        present = set(findings.split("|")) - {"No Finding"}
        assert {f for f in nih.NIH_FINDINGS if row[f] == "1"} == present
        assert {row[f] for f in nih.NIH_FINDINGS} <= {"0", "1"}
        assert set(row["label"].split("|")) == (present or {"No Finding"})
        assert row["patient_id"] == str(pid)
        assert (row["split"] == "test") == (pid >= 7)
        assert (nih_root / row["path"]).is_file()
    assert by_name["00000003_000.png"]["label"] == "Effusion|Infiltration|Mass"  # canonical order
    assert by_name["00000002_000.png"]["age"] == "81"  # "081Y"
    assert by_name["00000001_000.png"]["sex"] == "F"
    assert by_name["00000001_000.png"]["orig_width"] == "2500"
    assert by_name["00000001_000.png"]["pixel_spacing_y"] == "0.143"
    assert json.loads(by_name["00000003_000.png"]["boxes"]) == [
        {"x": 225.084745762712, "y": 547.019216763771, "width": 86.7796610169491,
         "height": 79.1864406779661, "label": "Infiltration"},
        {"x": 10, "y": 20, "width": 30, "height": 40, "label": "Mass"},
    ]  # fmt: skip
    assert json.loads(by_name["00000007_000.png"]["boxes"])[0]["label"] == "Atelectasis"
    assert json.loads(by_name["00000001_000.png"]["boxes"]) == []
    assert {row["split"] for row in rows} == {"train", "val", "test"}
    _assert_patient_disjoint(rows)

    manifest = load_manifest(out, task="multilabel", classes=list(nih.NIH_FINDINGS))
    expected = np.array([[float(r[f]) for f in nih.NIH_FINDINGS] for r in rows])
    np.testing.assert_array_equal(manifest.targets, expected)


def test_nih_missing_images(nih_root: Path, tmp_path: Path) -> None:
    for name in ("00000004_000.png", "00000005_000.png"):
        (nih_root / "images_002" / "images" / name).unlink(missing_ok=True)
        (nih_root / "images_001" / "images" / name).unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match=r"2 image.*00000004_000\.png, 00000005_000\.png"):
        nih.build_manifest(nih_root, tmp_path / "m.csv")
    argv = [str(nih_root), str(tmp_path / "m.csv"), "--missing", "drop", "--no-official-split"]
    assert nih.main(argv) == 0
    _, rows = _read(tmp_path / "m.csv")
    assert len(rows) == len(NIH_ROWS) - 2
    assert {row["split"] for row in rows} == {""}


def test_nih_picks_newest_entry_file_and_rejects_unknown_findings(
    nih_root: Path, tmp_path: Path
) -> None:
    v2020 = [(n, "Hernia" if n == "00000002_000.png" else f, p, a) for n, f, p, a in NIH_ROWS]
    _write_text(
        nih_root / "Data_Entry_2017_v2020.csv",
        _nih_entry(v2020).replace("Patient Gender", "Patient Sex").replace(",\n", "\n"),
    )
    nih.build_manifest(nih_root, tmp_path / "m.csv", bbox_csv=None)
    columns, rows = _read(tmp_path / "m.csv")
    assert "boxes" not in columns and "sex" in columns
    assert rows[2]["label"] == "Hernia" and rows[2]["Hernia"] == "1"

    bad = [(n, "Covid" if p == 2 else f, p, a) for n, f, p, a in NIH_ROWS]
    _write_text(nih_root / "Data_Entry_2017_v2020.csv", _nih_entry(bad))
    with pytest.raises(ValueError, match=r"v2020\.csv line 4.*'Covid'"):
        nih.build_manifest(nih_root, tmp_path / "n.csv")
    with pytest.raises(FileNotFoundError, match=r"test_list\.txt"):
        (nih_root / "test_list.txt").unlink()
        nih.build_manifest(nih_root, tmp_path / "n.csv", entry_csv="Data_Entry_2017.csv")


# --------------------------------------------------------------------------- CheXpert

CHEXPERT_HEADER = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,"
    "Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,"
    "Pleural Effusion,Pleural Other,Fracture,Support Devices\n"
)


def _chexpert_row(path: str, sex: str, orientation: str, view: str, values: dict[str, str]) -> str:
    cells = [values.get(name, "") for name in chexpert.OBSERVATIONS]
    return ",".join([path, sex, "68", orientation, view, *cells]) + "\n"


@pytest.fixture
def chexpert_root(tmp_path: Path) -> Path:
    root = tmp_path / "CheXpert-v1.0-small"
    prefix = "CheXpert-v1.0-small"
    train = [CHEXPERT_HEADER]
    for p in range(1, 9):
        for study in (1, 2):
            values = {"Edema": "1.0", "Cardiomegaly": "-1.0", "Pneumonia": "0.0"}
            if p == 1 and study == 1:
                values = {"No Finding": "1.0", "Support Devices": "1.0"}
            base = f"{prefix}/train/patient{p:05d}/study{study}"
            for view, sex, orientation, ap_pa in [
                ("view1_frontal", "Female", "Frontal", "AP"),
                ("view2_lateral", "Male", "Lateral", ""),
            ]:
                train.append(_chexpert_row(f"{base}/{view}.jpg", sex, orientation, ap_pa, values))
    valid = [CHEXPERT_HEADER]
    for p in (64541, 64542):
        base = f"{prefix}/valid/patient{p}/study1"
        values = {name: "0.0" for name in chexpert.CHEXPERT_FINDINGS} | {"Fracture": "1.0"}
        valid.append(_chexpert_row(f"{base}/view1_frontal.jpg", "Unknown", "Frontal", "PA", values))
    _write_text(root / "train.csv", "".join(train))
    _write_text(root / "valid.csv", "".join(valid))
    paths = [line.split(",")[0] for line in train[1:] + valid[1:]]
    _write_images([tmp_path / path for path in paths], "JPEG")
    return root


@pytest.mark.parametrize(
    ("uncertain", "expected"), [("ignore", ""), ("zeros", "0"), ("ones", "1"), ("keep", "-1")]
)
def test_chexpert_manifest_uncertainty(chexpert_root: Path, uncertain: str, expected: str) -> None:
    out = chexpert_root / "manifest.csv"
    chexpert.build_manifest(chexpert_root, out, uncertain=uncertain, val_fraction=0.25)
    columns, rows = _read(out)
    assert columns == [
        "path", "label", "patient_id", "split", *chexpert.CHEXPERT_FINDINGS,
        "sex", "age", "view", "frontal_lateral", "study",
    ]  # fmt: skip
    assert len(rows) == 8 * 2 + 2  # lateral views dropped
    assert {row["frontal_lateral"] for row in rows} == {"Frontal"}
    by_study = {(row["patient_id"], row["study"]): row for row in rows}
    ordinary = by_study[("patient00002", "study1")]
    assert ordinary["Cardiomegaly"] == expected  # -1.0 under the policy
    assert (ordinary["Edema"], ordinary["Pneumonia"], ordinary["Fracture"]) == ("1", "0", "")
    positives = "Cardiomegaly|Edema" if uncertain == "ones" else "Edema"
    assert ordinary["label"] == positives
    healthy = by_study[("patient00001", "study1")]
    assert healthy["label"] == "Support Devices" and healthy["Edema"] == ""
    test_rows = [row for row in rows if row["split"] == "test"]
    assert {row["patient_id"] for row in test_rows} == {"patient64541", "patient64542"}
    assert test_rows[0]["label"] == "Fracture" and test_rows[0]["Edema"] == "0"
    assert (test_rows[0]["sex"], test_rows[0]["view"], ordinary["sex"]) == ("", "PA", "F")
    assert {row["split"] for row in rows} == {"train", "val", "test"}
    _assert_patient_disjoint(rows)
    assert all((chexpert_root / row["path"]).is_file() for row in rows)


def test_chexpert_keep_defers_policy_to_loader(chexpert_root: Path) -> None:
    kept = chexpert.build_manifest(chexpert_root, chexpert_root / "k.csv", uncertain="keep")
    ones = chexpert.build_manifest(chexpert_root, chexpert_root / "o.csv", uncertain="ones")
    classes = list(chexpert.CHEXPERT_FINDINGS)
    a = load_manifest(kept, task="multilabel", classes=classes, uncertain="ones").targets
    b = load_manifest(ones, task="multilabel", classes=classes).targets
    np.testing.assert_array_equal(a, b)
    assert np.isnan(b).any() and (b == 1).any() and (b == 0).any()


def test_chexpert_laterals_and_renamed_root(chexpert_root: Path, tmp_path: Path) -> None:
    renamed = chexpert_root.rename(tmp_path / "chexpert")  # Path still says CheXpert-v1.0-small/
    out = tmp_path / "m.csv"
    assert chexpert.main([str(renamed), str(out), "--include-lateral"]) == 0
    _, rows = _read(out)
    assert len(rows) == 8 * 4 + 2
    laterals = [row for row in rows if row["frontal_lateral"] == "Lateral"]
    assert len(laterals) == 16 and all(row["path"].endswith("lateral.jpg") for row in laterals)
    assert all((out.parent / row["path"]).is_file() for row in rows)
    assert not any(row["path"].startswith("..") for row in rows)
    _assert_patient_disjoint(rows)


def test_chexpert_errors(chexpert_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uncertain"):
        chexpert.build_manifest(chexpert_root, tmp_path / "m.csv", uncertain="maybe")
    text = (chexpert_root / "valid.csv").read_text()
    _write_text(chexpert_root / "valid.csv", text.replace("Fracture", "Fractures", 1))
    with pytest.raises(ValueError, match=r"valid\.csv.*'Fracture'"):
        chexpert.build_manifest(chexpert_root, tmp_path / "m.csv")
    _write_text(chexpert_root / "valid.csv", text.replace(",1.0,", ",2.0,", 1))
    with pytest.raises(ValueError, match=r"valid\.csv line 2 column 'Fracture'.*'2\.0'"):
        chexpert.build_manifest(chexpert_root, tmp_path / "m.csv")
    _write_text(chexpert_root / "valid.csv", text)
    next(chexpert_root.glob("valid/patient64542/study1/*.jpg")).unlink()
    with pytest.raises(FileNotFoundError, match="patient64542"):
        chexpert.build_manifest(chexpert_root, tmp_path / "m.csv")
    chexpert.build_manifest(chexpert_root, tmp_path / "m.csv", missing="drop")
    assert len(_read(tmp_path / "m.csv")[1]) == 8 * 2 + 1


@pytest.mark.parametrize(
    ("blank", "ordinary_fracture", "healthy_edema", "healthy_devices"),
    [
        ("unknown", "", "", "1"),
        ("negative", "0", "0", "1"),
        ("negative_if_no_finding", "", "0", "1"),
    ],
)
def test_chexpert_blank_policies(
    chexpert_root: Path,
    blank: str,
    ordinary_fracture: str,
    healthy_edema: str,
    healthy_devices: str,
) -> None:
    text = (chexpert_root / "train.csv").read_text()
    lines = text.splitlines(keepends=True)
    # a No Finding row whose Support Devices cell is blank: "No Finding" allows devices
    extra = lines[1].replace("train/patient00001/study1", "train/patient00001/study3")
    extra = extra.rsplit(",", 1)[0] + ",\n"
    _write_text(chexpert_root / "train.csv", text + extra)
    _write_images([chexpert_root.parent / extra.split(",")[0]], "JPEG")
    out = chexpert_root / "m.csv"
    chexpert.build_manifest(chexpert_root, out, blank=blank, uncertain="ignore")
    _, rows = _read(out)
    by_study = {(row["patient_id"], row["study"]): row for row in rows}
    ordinary = by_study[("patient00002", "study1")]
    assert ordinary["Fracture"] == ordinary_fracture  # blank in the source
    assert ordinary["Cardiomegaly"] == ""  # -1 ignored: stays unknown under every blank policy
    assert ordinary["Edema"] == "1" and ordinary["Pneumonia"] == "0"  # stated cells never change
    healthy = by_study[("patient00001", "study1")]
    assert healthy["Edema"] == healthy_edema and healthy["Support Devices"] == healthy_devices
    no_devices = by_study[("patient00001", "study3")]["Support Devices"]
    assert no_devices == ("0" if blank == "negative" else "")
    with pytest.raises(ValueError, match=r"blank must be one of.*'zero'"):
        chexpert.build_manifest(chexpert_root, out, blank="zero", overwrite=True)


def test_adapter_command_lines_share_one_helper(chexpert_root: Path, capsys) -> None:
    out = chexpert_root / "cli.csv"
    argv = [str(chexpert_root), str(out), "--blank", "negative", "--val-fraction", "0.25"]
    assert chexpert.main(argv) == 0
    _, rows = _read(out)
    assert rows and all(row["Lung Lesion"] == "0" for row in rows)  # blank everywhere -> 0
    with pytest.raises(SystemExit):
        chexpert.main([str(chexpert_root), str(out), "--blank", "zero"])
    assert "invalid choice: 'zero'" in capsys.readouterr().err
    with pytest.raises(FileExistsError, match=r"cli\.csv"):
        chexpert.main(argv)  # --overwrite comes from the shared helper
    assert chexpert.main([*argv, "--overwrite", "--include-lateral"]) == 0
    assert len(_read(out)[1]) == 8 * 4 + 2
    for module in (kermany, rsna, nih, chexpert):
        with pytest.raises(SystemExit) as exit_info:
            module.main(["--help"])
        assert exit_info.value.code == 0
        usage = capsys.readouterr().out
        assert f"python -m chestxr.data.adapters.{module.__name__.rsplit('.', 1)[1]}" in usage
        assert ("--overwrite" in usage and "--val-fraction" in usage) or module is rsna
