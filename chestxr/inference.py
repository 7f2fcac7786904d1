"""Load a trained model and run it over a data set: the loop evaluate, report and predict share."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from chestxr import keys
from chestxr.models.module import ChestXRClassifier
from chestxr.utils.hardware import autocast, best_precision, inference_device

log = logging.getLogger(__name__)


def refused_message(path: str | os.PathLike[str]) -> str:
    """What chestxr says about a file that ``torch.load(weights_only=True)`` refused."""
    return (
        f"refusing to load {path}: it holds objects other than tensors and plain containers "
        "(not a chestxr checkpoint, or tampered with); chestxr never unpickles such files"
    )


def load_model(
    ckpt_path: str | os.PathLike[str], device: torch.device | None = None
) -> ChestXRClassifier:
    """A trained chestxr model from its checkpoint, in eval mode.

    Raises:
        FileNotFoundError: no file at ``ckpt_path``.
        ValueError: the file is not a chestxr checkpoint, or it holds objects other than tensors
            and plain containers (it is never unpickled: ``weights_only=True`` is explicit, so
            ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` cannot turn it off).
    """
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    device = device or inference_device()
    try:
        model = ChestXRClassifier.load_from_checkpoint(
            path, map_location=device, weights_only=True
        )
    except pickle.UnpicklingError:
        raise ValueError(refused_message(path)) from None
    except (KeyError, TypeError, RuntimeError) as err:
        raise ValueError(f"{path} is not a chestxr checkpoint ({err})") from err
    # checkpoints from before the reader's binning option were trained without it
    model.hparams.preprocess.setdefault("binning", False)
    return model.eval().to(device)


@torch.inference_mode()
def predict_dataset(
    model: ChestXRClassifier,
    dataset: Dataset,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    precision: str | None = None,
) -> dict[str, np.ndarray]:
    """Probabilities for every sample of a dataset, with their paths, patients and targets.

    Returns:
        ``prob`` and ``logit`` ``(N, K)``, ``target`` ``(N, K)`` (NaN unknown), ``path``,
        ``patient_id``, ``index`` ``(N,)``.
    """
    device = next(model.parameters()).device
    precision = precision or best_precision(device.type)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    out: dict[str, list[Any]] = {
        "logit": [],
        "target": [],
        "path": [],
        "patient_id": [],
        "index": [],
    }
    model.eval()
    for batch in loader:
        with autocast(device, precision):
            logits = model(batch[keys.IMAGE].to(device))
        out["logit"].append(logits.float().cpu().numpy())
        out["target"].append(np.asarray(batch[keys.TARGET], dtype=np.float32))
        out["path"].extend(batch[keys.PATH])
        out["patient_id"].extend(batch[keys.PATIENT_ID])
        out["index"].append(np.asarray(batch[keys.INDEX]))
    result = {
        "logit": np.concatenate(out["logit"]),
        "target": np.concatenate(out["target"]),
        "path": np.asarray(out["path"]),
        "patient_id": np.asarray(out["patient_id"]),
        "index": np.concatenate(out["index"]),
    }
    result["prob"] = 1.0 / (1.0 + np.exp(-result["logit"]))
    return result
