"""``python -m chestxr.export ckpt_path=PATH`` (``chestxr-export``): TorchScript, ONNX, a card.

The exported network takes ``(B, 1, S, S)`` images in [0, 1] preprocessed as the card says (the
normalisation is inside it) and returns logits; ``sigmoid`` gives probabilities, compared with the
card's thresholds for decisions.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from chestxr import __version__
from chestxr.inference import load_model
from chestxr.models.export import export_onnx, export_torchscript, write_model_card
from chestxr.utils.files import ensure_fresh_run_dir

log = logging.getLogger(__name__)
FORMATS = {"torchscript": "model.pt", "onnx": "model.onnx"}
CARD = "model_card.json"


def model_card(ckpt_path: Path, model: torch.nn.Module, files: dict[str, Path]) -> dict[str, Any]:
    """The JSON card that travels with an exported model."""
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    hp = model.hparams
    thresholds = model.thresholds.cpu().tolist()
    return {
        "schema": "chestxr.model_card/1",
        "chestxr_version": __version__,
        "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source_checkpoint": str(ckpt_path),
        "architecture": "ResNet-18, one input channel (torchvision topology)",
        "input": {
            "shape": [1, hp.preprocess["image_size"], hp.preprocess["image_size"]],
            "range": [0.0, 1.0],
            "preprocessing": dict(hp.preprocess),
            "normalization_inside_model": {"mean": float(model.mean), "std": float(model.std)},
        },
        "task": hp.task,
        "classes": list(hp.classes),
        "outputs": model.output_names,
        "activation": "sigmoid",
        "decision_thresholds": dict(zip(model.output_names, thresholds, strict=True)),
        "operating_point": dict(hp.operating_point or {}),
        "training": ckpt.get("chestxr", {}),
        "files": {
            fmt: {"path": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
            for fmt, p in files.items()
        },
    }


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export ``cfg.ckpt_path`` in ``cfg.formats``; returns the model card."""
    unknown = sorted(set(cfg.formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"formats {unknown} unknown; choose from {sorted(FORMATS)}")
    out_dir = Path(cfg.paths.output_dir)
    taken = [n for n in (*FORMATS.values(), CARD) if (out_dir / n).exists()]
    if taken:  # refuse before writing anything: the card's sha256 must name the files beside it
        raise FileExistsError(
            f"{out_dir} already holds an export ({', '.join(taken)}); choose another hydra.run.dir"
        )
    out_dir = ensure_fresh_run_dir(out_dir)
    model = load_model(cfg.ckpt_path, device=torch.device("cpu"))
    size = model.hparams.preprocess["image_size"]
    example = torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(0))
    net = model.inference_network()
    files: dict[str, Path] = {}
    if "torchscript" in cfg.formats:
        files["torchscript"] = export_torchscript(net, example, out_dir / FORMATS["torchscript"])
    if "onnx" in cfg.formats:
        files["onnx"] = export_onnx(net, example, out_dir / FORMATS["onnx"], opset=cfg.opset)
    card = model_card(Path(cfg.ckpt_path), model, files)
    write_model_card(out_dir / CARD, card)
    log.info("exported %s to %s", sorted(files), out_dir)
    return card


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
