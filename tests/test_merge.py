"""Merging manifests: findings under one canonical name, a finding a source lacks is unknown."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from chestxr.data.manifest import load_manifest
from chestxr.data.merge import main, merge_manifests


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture
def sources(tmp_path: Path) -> tuple[Path, Path]:
    """An NIH-like and a CheXpert-like manifest, in their own folders, with clashing patient ids."""
    nih = write_csv(
        tmp_path / "nih" / "manifest.csv",
        [
            "path",
            "label",
            "patient_id",
            "split",
            "Effusion",
            "Hernia",
            "Pleural_Thickening",
            "view",
        ],
        [
            ["images/a.png", "Effusion", "1", "train", "1", "0", "0", "PA"],
            ["images/b.png", "No Finding", "2", "test", "0", "0", "0", "AP"],
            ["images/c.png", "Hernia|Pleural_Thickening", "2", "test", "0", "1", "1", "AP"],
        ],
    )
    chexpert = write_csv(
        tmp_path / "chexpert" / "manifest.csv",
        ["path", "label", "patient_id", "split", "Cardiomegaly", "Pleural Effusion", "sex"],
        [
            ["train/p1/v1.jpg", "Pleural Effusion", "1", "train", "", "1", "F"],
            ["train/p2/v1.jpg", "No Finding", "2", "val", "0", "-1", "M"],
            ["/abs/p3.jpg", "Cardiomegaly", "3", "", "1.0", "0.0", ""],
        ],
    )
    return nih, chexpert


def test_merge_harmonises_names_and_leaves_absent_findings_unknown(sources, tmp_path):
    nih, chexpert = sources
    out = merge_manifests([nih, chexpert], tmp_path / "merged" / "all.csv")
    columns, rows = read_csv(out)
    assert columns == [
        "path", "label", "patient_id", "split",
        "Cardiomegaly", "Effusion", "Pleural Thickening", "Hernia",  # NIH's order
        "source", "view", "sex",
    ]  # fmt: skip
    assert len(rows) == 6
    a, b, c, d, e, f = rows
    # one name for one finding: NIH's Effusion and CheXpert's Pleural Effusion
    assert (a["Effusion"], d["Effusion"], e["Effusion"], f["Effusion"]) == ("1", "1", "-1", "0")
    # NIH has no Cardiomegaly column here; CheXpert has no Hernia: unknown, not negative
    assert a["Cardiomegaly"] == b["Cardiomegaly"] == c["Cardiomegaly"] == ""
    assert d["Hernia"] == e["Hernia"] == f["Hernia"] == ""
    assert (d["Cardiomegaly"], e["Cardiomegaly"], f["Cardiomegaly"]) == ("", "0", "1")
    assert c["label"] == "Pleural Thickening|Hernia" and b["label"] == "No Finding"
    assert d["label"] == "Effusion" and f["label"] == "Cardiomegaly"
    # patients from two sets never merge; splits and metadata kept
    assert [r["patient_id"] for r in rows] == [
        "nih:1", "nih:2", "nih:2", "chexpert:1", "chexpert:2", "chexpert:3",
    ]  # fmt: skip
    assert [r["split"] for r in rows] == ["train", "test", "test", "train", "val", ""]
    assert (a["view"], a["sex"], d["view"], d["sex"]) == ("PA", "", "", "F")
    # paths resolve from the merged manifest's folder to the same files
    assert (out.parent / a["path"]).resolve() == (nih.parent / "images/a.png").resolve()
    assert (out.parent / d["path"]).resolve() == (chexpert.parent / "train/p1/v1.jpg").resolve()
    assert f["path"] == "/abs/p3.jpg"


def test_merged_manifest_trains_with_unknowns_masked(sources, tmp_path):
    out = merge_manifests(list(sources), tmp_path / "all.csv")
    classes = ["Cardiomegaly", "Effusion", "Hernia"]
    m = load_manifest(
        out, task="multilabel", classes=classes, uncertain="ignore", check_files=False
    )
    expected = np.array(
        [
            [np.nan, 1, 0],
            [np.nan, 0, 0],
            [np.nan, 0, 1],
            [np.nan, 1, np.nan],
            [0, np.nan, np.nan],  # -1 ignored
            [1, 0, np.nan],
        ]
    )
    np.testing.assert_array_equal(m.targets, expected)


def test_merge_command_line_and_aliases(sources, tmp_path):
    nih, chexpert = sources
    out = tmp_path / "m.csv"
    argv = [str(out), str(nih), str(chexpert), "--alias", "Cardiomegaly=Enlarged Heart"]
    assert main(argv) == 0
    columns, rows = read_csv(out)
    assert "Enlarged Heart" in columns and "Cardiomegaly" not in columns
    assert rows[-1]["Enlarged Heart"] == "1" and rows[-1]["label"] == "Enlarged Heart"
    with pytest.raises(FileExistsError, match=r"m\.csv"):
        main(argv)
    assert main([*argv, "--overwrite"]) == 0


def test_merge_refuses_what_it_cannot_merge_soundly(sources, tmp_path):
    nih, _ = sources
    out = tmp_path / "m.csv"
    with pytest.raises(ValueError, match="at least two"):
        merge_manifests([nih], out)
    with pytest.raises(ValueError, match=r"images/a\.png.*already listed by .*nih"):
        merge_manifests([nih, nih], out)
    binary = write_csv(
        tmp_path / "k.csv", ["path", "label", "patient_id"], [["x.png", "NORMAL", "7"]]
    )
    with pytest.raises(ValueError, match=r"k\.csv has no finding column"):
        merge_manifests([nih, binary], out)
    clash = write_csv(
        tmp_path / "clash.csv",
        ["path", "label", "patient_id", "Effusion", "Pleural Effusion"],
        [["y.png", "", "8", "1", "1"]],
    )
    with pytest.raises(
        ValueError, match="'Effusion' and 'Pleural Effusion' both map to 'Effusion'"
    ):
        merge_manifests([nih, clash], out)
    bad = write_csv(
        tmp_path / "bad.csv", ["path", "label", "patient_id", "Hernia"], [["z.png", "", "9", "yes"]]
    )
    with pytest.raises(ValueError, match=r"bad\.csv line 2 column 'Hernia'.*'yes'"):
        merge_manifests([nih, bad], out)
    assert not out.exists()  # nothing written by a refused merge
