"""evaluate_predictions / write_evaluation files, and the ``chestxr.compare`` entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from sklearn.metrics import roc_auc_score

from chestxr.compare import compare
from chestxr.evaluation import (
    METRICS,
    SCHEMA,
    binary_metrics,
    choose_threshold,
    evaluate_predictions,
    read_predictions,
    write_evaluation,
)

N = 240


def _data(seed: int = 0, k: int = 2) -> dict:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, (N, k)).astype(float)
    y[rng.random((N, k)) < 0.15] = np.nan
    p = 1 / (1 + np.exp(-(1.5 * (2 * np.nan_to_num(y, nan=0.5) - 1) + rng.normal(0, 1, (N, k)))))
    return {
        "y_true": y,
        "y_prob": p,
        "patient_ids": np.array([f"P{i // 3:04d}" for i in range(N)]),
        "paths": [f"/data/scan_{i:04d}.dcm" for i in range(N)],
        "site": rng.choice(["A", "B", "tiny"], N, p=[0.55, 0.4, 0.05]),
    }


def _strict_json(path: Path) -> dict:
    def refuse(token: str) -> None:
        raise AssertionError(f"non-JSON constant {token} in {path}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_evaluate_predictions_masks_nan_and_matches_metrics():
    d = _data()
    thresholds = {"a": 0.4, "b": 0.6}
    m = evaluate_predictions(
        d["y_true"],
        d["y_prob"],
        ["a", "b"],
        thresholds,
        patient_ids=d["patient_ids"],
        n_bootstrap=100,
        subgroups={"site": d["site"]},
        min_group_size=30,
        threshold_rule={"rule": "youden", "chosen_on": "validation"},
    )
    assert m["schema"] == SCHEMA and set(m["outputs"]) == {"a", "b"}
    for j, name in enumerate(["a", "b"]):
        out = m["outputs"][name]
        labelled = ~np.isnan(d["y_true"][:, j])
        assert out["metrics"]["n"] == labelled.sum()
        assert out["metrics"]["roc_auc"] == pytest.approx(
            roc_auc_score(d["y_true"][labelled, j], d["y_prob"][labelled, j])
        )
        assert out["threshold"] == thresholds[name]
        assert out["threshold_rule"] == {"rule": "youden", "chosen_on": "validation"}
        low, high = out["ci95"]["roc_auc"]
        assert low < out["metrics"]["roc_auc"] < high
        assert out["n_patients"] == np.unique(d["patient_ids"][labelled]).size
        site_b = d["site"] == "B"
        expected = binary_metrics(d["y_true"][site_b, j], d["y_prob"][site_b, j], thresholds[name])
        assert m["subgroups"]["site"]["B"][name]["metrics"] == expected
    macro = m["macro"]
    assert macro["roc_auc"] == pytest.approx(
        np.mean([m["outputs"][n]["metrics"]["roc_auc"] for n in "ab"])
    )
    assert macro["ci95"]["roc_auc"][0] < macro["roc_auc"] < macro["ci95"]["roc_auc"][1]
    assert m["subgroups"]["site"]["tiny"]["a"]["warning"].startswith("only")
    assert m["subgroups"]["site"]["A"]["a"]["warning"] is None
    assert m["bootstrap"] == {
        "n_resamples": 100,
        "seed": 0,
        "unit": "patient",
        "confidence": 0.95,
        "method": "percentile",
    }


def test_thresholds_chosen_when_not_given():
    d = _data(k=1)
    m = evaluate_predictions(
        d["y_true"][:, 0], d["y_prob"][:, 0], ["pneumonia"], None, patient_ids=None, n_bootstrap=0
    )
    out = m["outputs"]["pneumonia"]
    assert out["threshold"] == choose_threshold(d["y_true"][:, 0], d["y_prob"][:, 0], "youden")
    assert out["threshold_rule"]["rule"] == "youden"
    assert "optimistic" in out["threshold_rule"]["chosen_on"]
    assert out["ci95"] == {} and "macro" not in m and m["bootstrap"]["unit"] == "scan"


def test_bad_arguments_raise():
    d = _data()
    with pytest.raises(ValueError, match="names"):
        evaluate_predictions(d["y_true"], d["y_prob"], ["a"], 0.5, patient_ids=None)
    with pytest.raises(ValueError, match="thresholds lack"):
        evaluate_predictions(d["y_true"], d["y_prob"], ["a", "b"], {"a": 0.5}, patient_ids=None)


def test_write_evaluation_binary(tmp_path):
    d = _data(k=1)
    m = write_evaluation(
        tmp_path,
        y_true=d["y_true"][:, 0],
        y_prob=d["y_prob"][:, 0],
        names=["pneumonia"],
        thresholds=[0.5],
        patient_ids=d["patient_ids"],
        paths=d["paths"],
        extra_columns={"site": d["site"]},
        subgroups=["site"],
        n_bootstrap=100,
        class_names=["normal", "pneumonia"],
    )
    expected = {
        "predictions.csv",
        "metrics.json",
        "roc.png",
        "pr.png",
        "confusion_matrix.png",
        "reliability.png",
        "summary.html",
    }
    assert {p.name for p in tmp_path.iterdir()} == expected  # no temporary files left
    for name in expected:
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    saved = _strict_json(tmp_path / "metrics.json")
    assert saved == m
    labelled = ~np.isnan(d["y_true"][:, 0])
    assert saved["outputs"]["pneumonia"]["metrics"]["roc_auc"] == pytest.approx(
        roc_auc_score(d["y_true"][labelled, 0], d["y_prob"][labelled, 0])
    )

    back = read_predictions(tmp_path / "predictions.csv")
    assert back["names"] == ["pneumonia"] and back["paths"] == d["paths"]
    np.testing.assert_array_equal(back["y_prob"][:, 0], d["y_prob"][:, 0])
    np.testing.assert_array_equal(back["y_true"][:, 0], d["y_true"][:, 0])  # NaN kept
    assert back["extra"]["site"] == list(d["site"])

    html = (tmp_path / "summary.html").read_text()
    assert "data:image/png;base64," in html and "src='http" not in html
    assert "<table class='subgroup' data-column='site'>" in html
    assert "only" in html and "(&lt; 30)" in html  # the small-group warning is visible

    with pytest.raises(FileExistsError, match=r"metrics\.json"):
        write_evaluation(
            tmp_path,
            y_true=d["y_true"][:, 0],
            y_prob=d["y_prob"][:, 0],
            names=["pneumonia"],
            thresholds=[0.5],
            patient_ids=d["patient_ids"],
            paths=d["paths"],
            n_bootstrap=0,
        )
    assert _strict_json(tmp_path / "metrics.json") == m


def test_write_evaluation_multi_output(tmp_path):
    d = _data(k=2)
    names = ["effusion", "pleural thickening"]
    m = write_evaluation(
        tmp_path,
        y_true=d["y_true"],
        y_prob=d["y_prob"],
        names=names,
        thresholds={"effusion": 0.5, "pleural thickening": 0.3},
        patient_ids=d["patient_ids"],
        paths=d["paths"],
        n_bootstrap=50,
    )
    files = {p.name for p in tmp_path.iterdir()}
    for stem in ("confusion_matrix", "roc"):
        assert {f"{stem}_effusion.png", f"{stem}_pleural_thickening.png"} <= files
    assert "macro" in _strict_json(tmp_path / "metrics.json")
    header = (tmp_path / "predictions.csv").read_text().splitlines()[0].split(",")
    assert header[:5] == ["path", "patient_id", "label_effusion", "prob_effusion", "pred_effusion"]
    assert m["outputs"]["pleural thickening"]["threshold"] == 0.3


def test_write_evaluation_checks_its_arguments(tmp_path):
    d = _data(k=1)
    common = {
        "y_true": d["y_true"][:, 0],
        "y_prob": d["y_prob"][:, 0],
        "names": ["x"],
        "thresholds": 0.5,
        "patient_ids": d["patient_ids"],
        "paths": d["paths"],
        "n_bootstrap": 0,
    }
    with pytest.raises(FileNotFoundError, match="missing"):
        write_evaluation(tmp_path / "missing", **common)
    with pytest.raises(ValueError, match="subgroup columns"):
        write_evaluation(tmp_path, subgroups=["sex"], **common)
    with pytest.raises(ValueError, match="clash"):
        write_evaluation(tmp_path, extra_columns={"prob_x": d["site"]}, **common)
    assert not any(tmp_path.iterdir())


def _two_runs(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(3)
    d = _data(k=1)
    weak = np.clip(d["y_prob"][:, 0] + rng.normal(0, 0.35, N), 0, 1)  # a noisier model B
    folders = []
    for name, prob, order in (
        ("a", d["y_prob"][:, 0], np.arange(N)),
        ("b", weak, rng.permutation(N)),
    ):
        folder = tmp_path / name
        folder.mkdir()
        write_evaluation(
            folder,
            y_true=d["y_true"][order, 0],
            y_prob=prob[order],
            names=["pneumonia"],
            thresholds=[0.5],
            patient_ids=d["patient_ids"][order],
            paths=[d["paths"][i] for i in order],
            n_bootstrap=0,
        )
        folders.append(folder / "predictions.csv")
    return folders[0], folders[1]


def _compose(overrides: list[str], repo_root: Path):
    with initialize_config_dir(config_dir=str(repo_root / "conf"), version_base="1.3"):
        return compose("compare", overrides=overrides)


def test_compare_joins_on_path_and_writes_json(tmp_path, repo_root):
    a, b = _two_runs(tmp_path)
    out = tmp_path / "cmp"
    cfg = _compose([f"a={a}", f"b={b}", f"out={out}", "n_bootstrap=300"], repo_root)
    result = compare(cfg)
    saved = _strict_json(out / "comparison.json")
    assert saved == result and saved["output"] == "pneumonia"
    pa, pb = read_predictions(a), read_predictions(b)
    keep = ~np.isnan(pa["y_true"][:, 0])
    assert saved["auc_a"] == pytest.approx(
        roc_auc_score(pa["y_true"][keep, 0], pa["y_prob"][keep, 0])
    )
    keep_b = ~np.isnan(pb["y_true"][:, 0])
    assert saved["auc_b"] == pytest.approx(
        roc_auc_score(pb["y_true"][keep_b, 0], pb["y_prob"][keep_b, 0])
    )
    assert saved["delta"] > 0 and saved["ci"][0] > 0
    assert saved["unit"] == "patient" and saved["n_resamples"] == 300
    with pytest.raises(FileExistsError):
        compare(cfg)


def test_compare_refuses_different_scans_and_labels(tmp_path, repo_root):
    a, b = _two_runs(tmp_path)
    lines = b.read_text().splitlines()
    dropped = lines[1].split(",")[0]
    short = tmp_path / "short.csv"
    short.write_text("\n".join(lines[:1] + lines[2:]) + "\n")
    cfg = _compose([f"a={a}", f"b={short}", f"out={tmp_path / 'x'}"], repo_root)
    with pytest.raises(ValueError, match=dropped):
        compare(cfg)

    row = lines[1].split(",")
    row[2] = "1" if row[2] != "1" else "0"
    flipped = tmp_path / "flipped.csv"
    flipped.write_text("\n".join([lines[0], ",".join(row), *lines[2:]]) + "\n")
    cfg = _compose([f"a={a}", f"b={flipped}", f"out={tmp_path / 'y'}"], repo_root)
    with pytest.raises(ValueError, match="labels of 'pneumonia' differ"):
        compare(cfg)


def test_compare_cli_writes_into_hydra_run_dir(tmp_path, repo_root):
    a, b = _two_runs(tmp_path)
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "chestxr.compare",
            f"a={a}",
            f"b={b}",
            "n_bootstrap=200",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HYDRA_FULL_ERROR": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    saved = _strict_json(run_dir / "comparison.json")
    assert saved["n_resamples"] == 200 and "delong" in saved


def test_predictions_csv_neutralises_formulas_and_compare_still_joins(tmp_path, repo_root):
    d = _data(k=1)
    paths = list(d["paths"])
    paths[0] = '=HYPERLINK("http://x.invalid","scan")'
    pids = d["patient_ids"].copy()
    pids[:3] = "=1+1"
    site = d["site"].astype(object)
    site[0] = "@SUM(A1)"
    runs = []
    for name, prob in (("a", d["y_prob"][:, 0]), ("b", d["y_prob"][::-1, 0])):
        (tmp_path / name).mkdir()
        write_evaluation(
            tmp_path / name,
            y_true=d["y_true"][:, 0],
            y_prob=prob,
            names=["pneumonia"],
            thresholds=[0.5],
            patient_ids=pids,
            paths=paths,
            extra_columns={"site": site},
            n_bootstrap=0,
        )
        runs.append(tmp_path / name / "predictions.csv")
    lines = runs[0].read_text().splitlines()
    assert lines[1].startswith("\"'=HYPERLINK(") and ",'=1+1," in lines[1]
    assert lines[1].endswith(",'@SUM(A1)")
    assert not any(c.startswith(("=", "+", "@")) for line in lines for c in line.split(","))
    cfg = _compose([f"a={runs[0]}", f"b={runs[1]}", f"out={tmp_path / 'cmp'}"], repo_root)
    assert compare(cfg)["n"] == int((~np.isnan(d["y_true"][:, 0])).sum())


def test_undefined_numbers_are_null_with_a_reason_in_every_json(tmp_path, repo_root):
    d = _data(k=1)
    y = d["y_true"][:, 0].copy()
    y[~np.isnan(y)] = 0
    y[5] = 1  # one positive: DeLong's variance is undefined
    (tmp_path / "ev").mkdir()
    write_evaluation(
        tmp_path / "ev",
        y_true=y,
        y_prob=d["y_prob"][:, 0],
        names=["pneumonia"],
        thresholds=[1.0],  # nothing predicted positive: PPV undefined
        patient_ids=d["patient_ids"],
        paths=d["paths"],
        n_bootstrap=20,
    )
    out = _strict_json(tmp_path / "ev" / "metrics.json")["outputs"]["pneumonia"]["metrics"]
    assert out["ppv"] is None and out["undefined"]["ppv"] == "no scan predicted positive"
    assert "ppv" in (tmp_path / "ev" / "summary.html").read_text().lower()

    a, b = _two_runs(tmp_path)
    for src in (a, b):  # keep one positive in both files
        lines = src.read_text().splitlines()
        rows = [r.split(",") for r in lines[1:]]
        for r in rows:
            r[2] = "" if r[2] == "" else ("1" if r[0].endswith("0005.dcm") else "0")
        src.write_text("\n".join([lines[0], *(",".join(r) for r in rows)]) + "\n")
    cfg = _compose([f"a={a}", f"b={b}", f"out={tmp_path / 'cmp'}", "n_bootstrap=50"], repo_root)
    compare(cfg)
    delong = _strict_json(tmp_path / "cmp" / "comparison.json")["delong"]
    assert delong["p_value"] is None and "at least 2 positives" in delong["reason"]


def test_summary_html_escapes_names_and_lists_every_registered_metric(tmp_path):
    d = _data(k=1)
    write_evaluation(
        tmp_path,
        y_true=d["y_true"][:, 0],
        y_prob=d["y_prob"][:, 0],
        names=["<script>alert(1)</script>"],
        thresholds=[0.5],
        patient_ids=d["patient_ids"],
        paths=d["paths"],
        n_bootstrap=0,
        title="a & b",
    )
    html = (tmp_path / "summary.html").read_text()
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<title>a &amp; b</title>" in html
    assert all(f"<td class='l'>{m.label}</td>" in html for m in METRICS)
