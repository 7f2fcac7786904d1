"""Loading checkpoints: a crafted pickle is refused with chestxr's words, its payload never runs."""

from __future__ import annotations

import builtins

import pytest
import torch

from chestxr.inference import load_model


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: it creates a file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def test_crafted_checkpoint_payload_never_runs(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": _Payload(str(marker))}}, ckpt)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(ValueError, match="refusing to load") as info:
        load_model(ckpt, device=torch.device("cpu"))
    assert str(ckpt) in str(info.value)
    assert "weights_only=False" not in str(info.value)
    assert not marker.exists()
