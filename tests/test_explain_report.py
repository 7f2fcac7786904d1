"""The HTML report: self-contained, every scan once, sorted, escaped, no file paths leaked."""

from __future__ import annotations

import re

import numpy as np
import pytest

from chestxr.explain import ReportEntry, outcome, overlay_figure, overlay_key, write_report_html


@pytest.fixture
def pngs(tmp_path):
    folder = tmp_path / "DOE^JOHN"  # a path that identifies a patient must never reach the report
    image = np.random.default_rng(0).random((40, 30)).astype(np.float32)
    cam = np.zeros_like(image)
    cam[10:20, 5:15] = 1.0
    return {
        "image": overlay_figure(image, np.zeros_like(image), folder / "img.png", title="img"),
        "gradcam": overlay_figure(image, cam, folder / "gc.png", title="gradcam"),
    }


def _entries(pngs) -> list[ReportEntry]:
    rows = [  # scan, probability, decision, label → TP, FP, FN, TN, unlabelled
        ("s1", 0.95, True, 1.0),
        ("s2", 0.70, True, 0.0),
        ("s3", 0.30, False, 1.0),
        ("s4", 0.05, False, 0.0),
        ("s5", 0.50, True, None),
    ]
    return [
        ReportEntry(
            scan_id=sid,
            image_png=pngs["image"],
            overlays={"gradcam": pngs["gradcam"]},
            probabilities={"pneumonia": p},
            decisions={"pneumonia": d},
            labels={"pneumonia": y},
            extra={"note": "<script>alert(1)</script>"} if sid == "s2" else {},
        )
        for sid, p, d, y in rows
    ]


def test_outcome_codes() -> None:
    assert [outcome(True, 1.0), outcome(True, 0.0), outcome(False, 1.0), outcome(False, 0.0)] == [
        "TP",
        "FP",
        "FN",
        "TN",
    ]
    assert outcome(True, None) == outcome(False, float("nan")) == outcome(None, 1.0) == "unlabelled"


def test_report_is_self_contained_and_lists_every_scan_once(tmp_path, pngs) -> None:
    out = write_report_html(
        tmp_path / "out" / "report.html",
        _entries(pngs),
        title="Test <report>",
        summary={"AUROC": 0.875, "threshold": 0.5},
        output_names=["pneumonia"],
    )
    text = out.read_text(encoding="utf-8")
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temporary file left
    for sid in ("s1", "s2", "s3", "s4", "s5"):
        assert len(re.findall(rf"<div class='card' id='card-\d+'[^>]*><h3>{sid}</h3>", text)) == 1
    assert text.count("<div class='card'") == 5
    # 5 raw images + 5 overlays, all inline
    assert text.count('src="data:image/png;base64,') == 10
    assert "http://" not in text and "https://" not in text and 'src="/' not in text
    assert "DOE^JOHN" not in text and str(pngs["image"]) not in text
    for label in ("All", "TP", "FP", "FN", "TN"):
        assert f">{label}</button>" in text
    assert "<script>alert(1)</script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "Test &lt;report&gt;" in text and "0.875" in text
    # the index table lists scans by probability, highest first, with their outcomes
    index = text[text.index("class='index'") : text.index("id='cards'")]
    assert re.findall(r">(s\d)</a>", index) == ["s1", "s2", "s5", "s3", "s4"]
    assert re.findall(r"data-outcome='(\w+)'><td>", index) == ["TP", "FP", "unlabelled", "FN", "TN"]


def test_report_with_several_findings(tmp_path, pngs) -> None:
    entries = _entries(pngs)[:2]
    for e in entries:
        e.probabilities["effusion"] = 1.0 - e.probabilities["pneumonia"]
        e.decisions["effusion"] = not e.decisions["pneumonia"]
        e.labels["effusion"] = 0.0
        e.overlays = {overlay_key("effusion", "gradcam"): pngs["gradcam"]}
    out = write_report_html(
        tmp_path / "r.html", entries, title="t", output_names=["pneumonia", "effusion"]
    )
    text = out.read_text(encoding="utf-8")
    assert "<select id='finding'>" in text
    assert text.count("<section class='finding'") == 2
    effusion = text[text.index("data-finding='1'") : text.index("id='cards'")]
    assert re.findall(r">(s\d)</a>", effusion) == ["s2", "s1"]
    assert "data-o0='TP' data-o1='TN'" in text and "data-o0='FP' data-o1='TN'" in text
    assert text.count('src="data:image/png;base64,') == 4  # image + the effusion overlay, x2


def test_report_rejects_duplicates_and_missing_images(tmp_path, pngs) -> None:
    entries = _entries(pngs)
    with pytest.raises(ValueError, match="s1"):
        write_report_html(
            tmp_path / "r.html", [entries[0], entries[0]], title="t", output_names=["pneumonia"]
        )
    entries[0].image_png = tmp_path / "missing.png"
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        write_report_html(tmp_path / "r.html", entries, title="t", output_names=["pneumonia"])
    assert not (tmp_path / "r.html").exists()


def test_scans_without_images_are_listed_but_get_no_card_and_the_gallery_links(
    tmp_path, pngs
) -> None:
    entries = _entries(pngs)
    entries[3].image_png = None  # the TN scan: not sampled
    for e in entries[:3]:
        e.thumbnails = {"pneumonia": pngs["gradcam"]}
    text = write_report_html(
        tmp_path / "r.html", entries, title="t", output_names=["pneumonia"]
    ).read_text(encoding="utf-8")
    assert text.count("<div class='card'") == 4
    index = text[text.index("class='index'") : text.index("id='cards'")]
    assert "<td>s4</td>" in index and ">s4</a>" not in index  # listed, not linked
    assert "5 scans, 4 shown as cards" in text
    links = re.findall(r"<a class='thumb (\w+)' data-outcome='\w+' href='#card-(\d+)'", text)
    assert links == [("TP", "0"), ("FP", "1"), ("FN", "2")]
    for _, i in links:
        assert f"id='card-{i}'" in text
