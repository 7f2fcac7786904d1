"""Export: TorchScript and ONNX reproduce the eager network; the model card is written once."""

from __future__ import annotations

import importlib.util
import inspect
import json
import math
import sys

import numpy as np
import pytest
import torch

from chestxr.models.export import export_onnx, export_torchscript, write_model_card
from chestxr.models.resnet import build_resnet18


def _net_and_batch(k: int = 3) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    net = build_resnet18(k)
    # a few train-mode passes move BN's running stats off their (0, 1) init, so that eval mode
    # (which the exports must use) really differs from train mode
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(4, 1, 48, 48) * 2 + 1)
    return net, torch.rand(2, 1, 48, 48)


def test_torchscript_equals_eager_in_eval_mode(tmp_path):
    net, x = _net_and_batch()
    path = export_torchscript(net, x, tmp_path / "model.pt")
    assert net.training  # mode restored
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        eager = net.eval()(x)
        other = torch.rand(5, 1, 64, 64)  # traced graph takes other batch and image sizes
        assert (loaded(x) - eager).abs().max().item() < 1e-4
        assert (loaded(other) - net(other)).abs().max().item() < 1e-4
        assert (net.train()(x) - eager).abs().max().item() > 1e-3  # eval mode mattered
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.skipif(
    importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None,
    reason="ONNX export needs the optional packages onnx and onnxruntime (pip install onnx "
    "onnxruntime); they are not installed here",
)
@pytest.mark.parametrize("dynamo", [False, True])
def test_onnx_equals_eager(tmp_path, dynamo):
    if dynamo and importlib.util.find_spec("onnxscript") is None:
        pytest.skip("the torch.export-based ONNX exporter needs onnxscript, not installed")
    if dynamo and "dynamo" not in inspect.signature(torch.onnx.export).parameters:
        pytest.skip(
            f"the torch.export-based ONNX exporter needs torch >= 2.5 ({torch.__version__})"
        )
    import onnxruntime

    net, x = _net_and_batch()
    path = export_onnx(net, x, tmp_path / "model.onnx", dynamo=dynamo)
    assert net.training
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    other = torch.rand(5, 1, 48, 48)  # batch axis is dynamic
    with torch.no_grad():
        for batch in (x, other):
            (got,) = session.run(["logits"], {"image": batch.numpy()})
            assert np.abs(got - net.eval()(batch).numpy()).max() < 1e-4


@pytest.mark.skipif(
    importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None,
    reason="ONNX export needs the optional packages onnx and onnxruntime; not installed here",
)
def test_onnx_export_on_a_torch_without_the_dynamo_switch(tmp_path, monkeypatch):
    """torch < 2.5: ``torch.onnx.export`` has no ``dynamo=`` (the TorchScript-based exporter
    alone). The default export still works there; ``dynamo=True`` says what it needs."""
    import onnxruntime

    real = torch.onnx.export
    calls = []

    def old_export(*args, **kwargs):  # no dynamo= in its signature, as before torch 2.5
        assert "dynamo" not in kwargs
        calls.append(1)
        if "dynamo" in inspect.signature(real).parameters:  # today's torch: its old exporter
            kwargs["dynamo"] = False
        real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", old_export)
    net, x = _net_and_batch()
    path = export_onnx(net, x, tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(["logits"], {"image": x.numpy()})
    with torch.no_grad():
        assert np.abs(got - net.eval()(x).numpy()).max() < 1e-4
    assert calls == [1]
    with pytest.raises(RuntimeError, match=r"needs torch >= 2.5.*dynamo=False"):
        export_onnx(net, x, tmp_path / "other.onnx", dynamo=True)
    assert not (tmp_path / "other.onnx").exists()


def test_onnx_without_onnx_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now fails, as if not installed
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    net, x = _net_and_batch()
    with pytest.raises(ModuleNotFoundError, match="pip install onnx"):
        export_onnx(net, x, tmp_path / "model.onnx")
    assert not list(tmp_path.iterdir())


def test_model_card_written_once(tmp_path):
    card = {
        "labels": ["pneumonia"],
        "normalisation": {"mean": 0.4488, "std": 0.226},
        "metrics": {"auc": np.float64(0.93), "auc_missing_label": math.nan},
        "weights": tmp_path / "model.pt",
        "image_size": torch.tensor(224),
    }
    path = write_model_card(tmp_path / "cards" / "model_card.json", card)
    data = json.loads(path.read_text())
    assert data["metrics"] == {"auc": 0.93, "auc_missing_label": None}
    assert data["weights"] == str(tmp_path / "model.pt") and data["image_size"] == 224
    assert data["normalisation"] == card["normalisation"]
    with pytest.raises(FileExistsError, match=r"model_card\.json"):
        write_model_card(path, {"labels": []})
    assert json.loads(path.read_text()) == data
    with pytest.raises(TypeError, match="object"):
        write_model_card(tmp_path / "bad.json", {"x": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cards"]  # no temporary file left


def _untrained_checkpoint(path, seed: int):
    import lightning as L

    from tests.test_finetuning import model

    torch.manual_seed(seed)
    m = model()
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.strategy.connect(m)
    trainer.save_checkpoint(path)
    return path


def test_export_into_a_folder_holding_an_export_refuses_before_writing(tmp_path):
    import hashlib

    from chestxr.export import export
    from tests.conftest import compose_config

    first = _untrained_checkpoint(tmp_path / "a.ckpt", seed=0)
    other = _untrained_checkpoint(tmp_path / "b.ckpt", seed=1)
    cfg = compose_config("export", tmp_path, [f"ckpt_path={first}", "formats=[torchscript]"])
    export(cfg)
    out = tmp_path / "run"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"model.pt", "model_card.json"}
    cfg = compose_config("export", tmp_path, [f"ckpt_path={other}", "formats=[torchscript]"])
    with pytest.raises(FileExistsError, match=r"already holds an export \(model\.pt"):
        export(cfg)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    card = json.loads(before["model_card.json"])
    assert card["files"]["torchscript"]["sha256"] == hashlib.sha256(before["model.pt"]).hexdigest()
