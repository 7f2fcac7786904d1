"""report_model on a small synthetic split: one read per scan, sampled cards, strict JSON."""

from __future__ import annotations

import json
import re

import pytest
import torch
from hydra.utils import instantiate

from tests.conftest import TINY_SYNTHETIC, compose_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("builder")
    cfg = compose_config(
        "train",
        tmp,
        [*TINY_SYNTHETIC, "data.manifest.n_images=60", "data.manifest.size_range=[96,128]"],
    )
    torch.manual_seed(0)
    return {"tmp": tmp, "cfg": cfg, "dm": instantiate(cfg.data), "model": instantiate(cfg.model)}


def _report(setup, name: str, monkeypatch=None, **overrides):
    from chestxr.explain.report_builder import report_model

    cfg = {**setup["cfg"].report, **overrides}
    return report_model(setup["model"], setup["dm"], setup["tmp"] / name, cfg)


def test_constant_cams_give_null_with_a_reason_and_each_scan_is_read_once(setup, monkeypatch):
    import chestxr.io.reader as reader

    model = setup["model"]
    fc = next(m for n, m in model.named_modules() if n.endswith("fc"))
    with torch.no_grad():  # the logit no longer depends on the image: every CAM is flat
        saved = fc.weight.clone()
        fc.weight.zero_()
    reads: list[str] = []

    def counted(real):
        def read(path, *args, **kwargs):
            reads.append(str(path))
            return real(path, *args, **kwargs)

        return read

    for name in ("read_dicom", "read_raster"):  # every pixel read, whichever function asks
        monkeypatch.setattr(reader, name, counted(getattr(reader, name)))
    try:
        metrics = _report(setup, "flat", max_scans=10, methods=["gradcam", "gradcam++"])
    finally:
        with torch.no_grad():
            fc.weight.copy_(saved)
    assert len(reads) == 10 and len(set(reads)) == 10  # each scan read once, no second read
    text = (setup["tmp"] / "flat" / "cam_metrics.json").read_text()
    assert "NaN" not in text
    written = json.loads(text)
    assert written["n_scans"] == metrics["n_scans"] == 10
    per = written["outputs"][next(iter(written["outputs"]))]
    for m in ("gradcam", "gradcam++"):
        assert per[m]["faithfulness_n"] > 0  # the randomisation check ran on flat maps
        assert per[m]["randomisation_spearman"] is None
        assert "flat" in per[m]["randomisation_spearman_reason"]


def test_every_error_and_a_sample_of_the_rest_get_cards(setup):
    n = len(setup["dm"].rows("test"))
    _report(setup, "sampled", sample_correct=3, methods=["gradcam"])
    html = (setup["tmp"] / "sampled" / "report.html").read_text()
    rows = re.findall(r"<tr class='row' data-outcome='(\w+)'>", html)
    assert len(rows) == n  # every scan is listed and counted
    cards = re.findall(r"<div class='card' id='card-\d+' data-o0='(\w+)'>", html)
    errors = sum(o in ("FP", "FN") for o in rows)
    assert sorted(c for c in cards if c in ("FP", "FN")) == sorted(
        o for o in rows if o in ("FP", "FN")
    )
    assert errors > 0 and len(cards) == errors + min(3, n - errors)
    assert html.count("class='thumb") == len(cards)
    assert 'src="data:image/png' not in html and html.count(
        'src="data:image/jpeg;base64,'
    ) >= 3 * len(cards)


def test_unknown_method_is_refused_before_reading(setup):
    with pytest.raises(ValueError, match="'lime'"):
        _report(setup, "bad", methods=["gradcam", "lime"])
    assert not (setup["tmp"] / "bad").exists()


def test_report_names_scans_as_predict_does(setup, tmp_path, monkeypatch):
    """The same file and ``id_key`` give the same scan id in the report and in predict's CSV,
    however the path is spelled (a reader can match the two)."""
    import csv
    import os

    from chestxr import keys
    from chestxr.data.datamodule import make_items
    from chestxr.inference import predict_files

    _report(setup, "keyed", max_scans=3, methods=["gradcam"], id_key="secret")
    html = (setup["tmp"] / "keyed" / "report.html").read_text()
    in_report = set(re.findall(r"scan-[0-9a-f]{10}", html))
    dm = setup["dm"]
    items = make_items(dm.load(), dm.rows("test")[:3])
    monkeypatch.chdir(tmp_path)
    files = [os.path.relpath(item[keys.PATH]) for item in items]  # another spelling, same file
    predict_files(setup["model"], files, tmp_path, id_key="secret")
    with (tmp_path / "predictions.csv").open() as f:
        in_predict = {row["scan_id"] for row in csv.DictReader(f)}
    assert len(in_predict) == 3 and in_report == in_predict
