"""The manifest: column parsing, label alignment, clear errors, and patient-level splits."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from chestxr.data.manifest import ManifestError, load_manifest, output_names
from chestxr.data.splits import assign_splits


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture
def images(tmp_path: Path) -> list[str]:
    names = [f"im{i}.png" for i in range(6)]
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    return names


def test_binary_labels_and_relative_paths(tmp_path, images):
    rows = [[n, "NORMAL" if i % 2 else "PNEUMONIA", f"p{i // 2}"] for i, n in enumerate(images)]
    m = load_manifest(
        write_csv(tmp_path / "m.csv", ["path", "label", "patient_id"], rows),
        task="binary",
        classes=["NORMAL", "PNEUMONIA"],
    )
    assert m.output_names == ["PNEUMONIA"]
    assert m.targets[:, 0].tolist() == [1, 0, 1, 0, 1, 0]
    assert all(Path(p).is_absolute() and Path(p).exists() for p in m.paths)
    assert list(m.splits) == [""] * 6


def test_unknown_label_names_file_row_and_value(tmp_path, images):
    rows = [[images[0], "NORMAL", "p0"], [images[1], "COVID", "p1"]]
    csv_path = write_csv(tmp_path / "m.csv", ["path", "label", "patient_id"], rows)
    with pytest.raises(ManifestError, match=r"m\.csv.*'COVID'.*row 3"):
        load_manifest(csv_path, task="binary", classes=["NORMAL", "PNEUMONIA"])


def test_missing_column_and_missing_file_are_named(tmp_path, images):
    p = write_csv(tmp_path / "a.csv", ["path", "label"], [[images[0], "NORMAL"]])
    with pytest.raises(ManifestError, match="patient_id"):
        load_manifest(p, task="binary", classes=["NORMAL", "PNEUMONIA"])
    p = write_csv(
        tmp_path / "b.csv", ["path", "label", "patient_id"], [["gone.png", "NORMAL", "a"]]
    )
    with pytest.raises(ManifestError, match=r"gone\.png"):
        load_manifest(p, task="binary", classes=["NORMAL", "PNEUMONIA"])
    p = write_csv(
        tmp_path / "c.csv",
        ["path", "label", "patient_id", "split"],
        [[images[0], "NORMAL", "a", "training"]],
    )
    with pytest.raises(ManifestError, match="training"):
        load_manifest(p, task="binary", classes=["NORMAL", "PNEUMONIA"])


def test_multilabel_from_pipe_joined_labels(tmp_path, images):
    rows = [
        [images[0], "Effusion|Nodule", "a"],
        [images[1], "No Finding", "b"],
        [images[2], "Nodule", "c"],
    ]
    m = load_manifest(
        write_csv(tmp_path / "m.csv", ["path", "label", "patient_id"], rows),
        task="multilabel",
        classes=["Effusion", "Nodule", "Mass"],
    )
    np.testing.assert_array_equal(m.targets, [[1, 1, 0], [0, 0, 0], [0, 1, 0]])


@pytest.mark.parametrize(
    ("policy", "expected"), [("ignore", np.nan), ("zeros", 0.0), ("ones", 1.0)]
)
def test_multilabel_columns_with_blank_and_uncertain(tmp_path, images, policy, expected):
    rows = [[images[0], "a", "1", ""], [images[1], "b", "0", "-1"], [images[2], "c", "-1.0", "1.0"]]
    m = load_manifest(
        write_csv(tmp_path / "m.csv", ["path", "patient_id", "Edema", "Mass"], rows),
        task="multilabel",
        classes=["Edema", "Mass"],
        uncertain=policy,
    )
    assert m.targets[0, 0] == 1 and np.isnan(m.targets[0, 1])  # blank is always unknown
    np.testing.assert_array_equal(m.targets[1:, :][[0, 1], [1, 0]], [expected, expected])


def test_binary_needs_two_classes():
    with pytest.raises(ValueError, match="multilabel"):
        output_names("binary", ["a", "b", "c"])


def test_splits_keep_patients_together_and_stratify():
    rng = np.random.default_rng(0)
    pid = rng.integers(0, 300, size=2000).astype(str)
    y = (rng.random((2000, 1)) < 0.3).astype(np.float32)
    s = assign_splits(pid, y, val_fraction=0.15, test_fraction=0.2, seed=1)
    for p in np.unique(pid):
        assert len(set(s[pid == p])) == 1, p
    patients = {sp: set(pid[s == sp]) for sp in ("train", "val", "test")}
    assert not (
        patients["train"] & patients["test"]
        or patients["val"] & patients["test"]
        or patients["train"] & patients["val"]
    )
    n = len(np.unique(pid))
    assert abs(len(patients["test"]) / n - 0.2) < 0.03
    assert abs(len(patients["val"]) / n - 0.15) < 0.03
    # stratified: each split holds the label mix of the whole (30% positives)
    for split in ("train", "val", "test"):
        assert abs(y[s == split].mean() - y.mean()) < 0.05, split
    # the same seed gives the same split, another seed another one
    assert (assign_splits(pid, y, seed=1, val_fraction=0.15, test_fraction=0.2) == s).all()
    assert (assign_splits(pid, y, seed=2, val_fraction=0.15, test_fraction=0.2) != s).any()


def test_given_splits_kept_inherited_and_leaks_refused():
    pid = np.array(["a", "a", "b", "c", "c"])
    y = np.zeros((5, 1), np.float32)
    s = assign_splits(pid, y, np.array(["test", "", "val", "", ""]), seed=0)
    assert s[0] == s[1] == "test" and s[2] == "val"
    with pytest.raises(ManifestError, match="more than one split"):
        assign_splits(pid, y, np.array(["test", "train", "", "", ""]))


def test_an_image_listed_twice_is_refused_with_its_rows(tmp_path, images):
    # the same file twice (once as ./name) would count twice in every metric
    rows = [[n, "NORMAL" if i % 2 else "PNEUMONIA", f"p{i}"] for i, n in enumerate(images)]
    rows.append([f"./{images[2]}", "PNEUMONIA", "p2"])
    path = write_csv(tmp_path / "m.csv", ["path", "label", "patient_id"], rows)
    with pytest.raises(ManifestError, match=r"listed more than once.*im2\.png.*rows \[4, 8\]"):
        load_manifest(path, task="binary", classes=["NORMAL", "PNEUMONIA"])
