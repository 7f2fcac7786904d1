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
