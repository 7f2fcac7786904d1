"""Loading checkpoints: a crafted pickle is refused with chestxr's words, its payload never runs."""

from __future__ import annotations

import builtins
from pathlib import Path

import pytest
import torch

from chestxr.inference import load_model
from chestxr.models.pretrained import init_from_checkpoint, load_imagenet_state_dict
from chestxr.models.resnet import build_resnet18


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: it creates a file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def evil(tmp_path) -> tuple[Path, Path]:
    """A ``torch.save`` file whose unpickling would create ``marker``."""
    marker, path = tmp_path / "pwned", tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": _Payload(str(marker))}}, path)
    return path, marker


def test_crafted_checkpoint_payload_never_runs(tmp_path, monkeypatch):
    ckpt, marker = evil(tmp_path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(ValueError, match="refusing to load") as info:
        load_model(ckpt, device=torch.device("cpu"))
    assert str(ckpt) in str(info.value)
    assert "weights_only=False" not in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("loader", ["imagenet", "init_checkpoint"])
def test_crafted_weights_for_fine_tuning_are_refused(tmp_path, monkeypatch, loader):
    """``model.pretrained=FILE`` and ``model.init_checkpoint=CKPT`` refuse it the same way."""
    path, marker = evil(tmp_path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(ValueError, match="refusing to load") as info:
        if loader == "imagenet":
            load_imagenet_state_dict(path)
        else:
            init_from_checkpoint(build_resnet18(1), path, num_outputs=1)
    assert str(path) in str(info.value) and "weights_only=False" not in str(info.value)
    assert not marker.exists()


def _model_where_bf16_is_fastest(monkeypatch):
    """A small binary classifier, with the device's fastest precision pretending to be bf16."""
    from chestxr.models.module import ChestXRClassifier

    monkeypatch.setattr("chestxr.inference.best_precision", lambda *_: "bf16-mixed")
    torch.manual_seed(0)
    return ChestXRClassifier(
        task="binary",
        classes=["a", "b"],
        preprocess={"image_size": 32},
        optimizer={"_target_": "torch.optim.AdamW", "_partial_": True},
        channels_last=False,
    ).eval()


def test_metrics_are_computed_in_fp32_whatever_the_cpu(monkeypatch):
    """predict_dataset (evaluation, operating points, report) runs in fp32 even where the
    device's fastest precision is bf16: bf16 would tie close scores and move the AUC."""
    from chestxr import keys
    from chestxr.inference import predict_dataset

    model = _model_where_bf16_is_fastest(monkeypatch)
    images = torch.rand(6, 1, 32, 32)
    data = [
        {
            keys.IMAGE: images[i],
            keys.TARGET: torch.tensor([i % 2.0]),
            keys.PATH: f"x{i}",
            keys.PATIENT_ID: f"p{i}",
            keys.INDEX: i,
        }
        for i in range(6)
    ]
    with torch.no_grad():
        expected = model(images).float().numpy()
    got = predict_dataset(model, data, batch_size=3)["logit"]
    assert got == pytest.approx(expected, abs=1e-5)
    bf16 = predict_dataset(model, data, batch_size=3, precision=None)["logit"]
    assert bf16 != pytest.approx(expected, abs=1e-5)  # the other path really is bf16


def _pngs(folder: Path, n: int, seed: int) -> list[Path]:
    """``n`` small random greyscale PNGs."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    files = []
    for i in range(n):
        files.append(folder / f"im{i}.png")
        Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8)).save(files[-1])
    return files


def _predicted(model, files: list[Path], out: Path, **options):
    """``predict_files`` into ``out`` (batches of 2); the probabilities of its CSV."""
    import csv

    import numpy as np

    from chestxr.inference import predict_files

    out.mkdir()
    predict_files(model, files, out, batch_size=2, **options)
    with (out / "predictions.csv").open() as f:
        return np.asarray([float(r["prob_b"]) for r in csv.DictReader(f)])


def test_predict_runs_in_fp32_whatever_the_cpu(tmp_path, monkeypatch):
    """predict decides as evaluate and the DICOM node do: in fp32 even where the device's fastest
    precision is bf16 (a scan near the threshold must not be POSITIVE in one, negative in the
    other)."""
    from chestxr import keys
    from chestxr.data.inputs import SafeDataset

    model = _model_where_bf16_is_fastest(monkeypatch)
    files = _pngs(tmp_path, 4, seed=0)
    images = torch.stack([s[keys.IMAGE] for s in SafeDataset(files, {"image_size": 32})])
    with torch.no_grad():
        expected = torch.sigmoid(model(images).float()).numpy()[:, 0]

    def probs(out, **options):
        return _predicted(model, files, out, **options)

    assert probs(tmp_path / "fp32") == pytest.approx(expected, abs=2e-6)
    assert probs(tmp_path / "bf16", precision=None) != pytest.approx(expected, abs=2e-6)


def test_predict_with_cams_scores_and_explains_from_one_forward_pass(tmp_path, monkeypatch):
    """cams=true: the scores come from the explaining pass (fp32), equal to predict without maps,
    and the network runs once per batch, not once to score and again to explain."""
    model = _model_where_bf16_is_fastest(monkeypatch)
    files = _pngs(tmp_path, 5, seed=1)
    forwards = []
    model.net.register_forward_hook(lambda *_: forwards.append(1))

    def probs(out, **options):
        return _predicted(model, files, out, **options)

    plain = probs(tmp_path / "plain")
    assert len(forwards) == 3  # 5 scans in batches of 2
    forwards.clear()
    explained = probs(tmp_path / "cams", cams=True)
    assert len(forwards) == 3
    assert explained == pytest.approx(plain, abs=2e-6)
    assert len(list((tmp_path / "cams" / "cams").glob("*.png"))) == 5
