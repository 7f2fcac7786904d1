"""The node's only calls into the rest of chestxr (model loading, preprocessing, CAMs, readers).

Kept in one place so that changes of those functions' signatures are fixed here alone.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from chestxr import __version__, keys
from chestxr.io import RadiographReadError, read_header, read_radiograph
from chestxr.utils.ids import find_cause

if TYPE_CHECKING:
    from chestxr.explain.cam import TopFindingCams

log = logging.getLogger(__name__)


def load(ckpt_path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model (eval mode) and its description: names, thresholds, preprocessing, hashes.

    ``config_hash`` is the training run's, as the model card gives it (recorded in the
    checkpoint by ``chestxr.training``); a checkpoint without it gets a hash of the model's
    hyperparameters instead, with a warning, and ``config_hash_source`` says which it is
    (``run`` or ``hparams``).

    Raises:
        FileNotFoundError: no checkpoint at ``ckpt_path``.
        ValueError: not a chestxr checkpoint.
    """
    from chestxr.inference import load_model
    from chestxr.utils.checkpoints import load_tensors_only

    model = load_model(ckpt_path)
    thresholds = model.thresholds.detach().cpu().numpy().astype(float)
    no_op = bool(np.isnan(thresholds).any())
    data = Path(ckpt_path).expanduser().read_bytes()
    summary = load_tensors_only(io.BytesIO(data)).get("chestxr") or {}
    config_hash, source = summary.get("config_hash"), "run"
    if not config_hash:
        hparams = json.dumps(dict(model.hparams), sort_keys=True, default=str)
        config_hash, source = hashlib.sha256(hparams.encode()).hexdigest()[:12], "hparams"
        log.warning(
            "%s records no training config hash (not saved by chestxr training); results "
            "carry a hash of the model's hyperparameters instead (config_hash_source=hparams)",
            ckpt_path,
        )
    info = {
        "outputs": list(model.output_names),
        "thresholds": np.where(np.isnan(thresholds), 0.5, thresholds).tolist(),
        "operating_point_stored": not no_op,
        "preprocess": dict(model.hparams.preprocess),
        "model_name": "chestxr ResNet-18",
        "chestxr_version": __version__,
        "model_version": hashlib.sha256(data).hexdigest()[:12],
        "config_hash": str(config_hash),
        "config_hash_source": source,
    }
    return model, info


def make_transform(preprocess: dict[str, Any]) -> Any:
    """The model's own deterministic preprocessing, as one callable on ``{image: path}``."""
    from chestxr.data.transforms import compose, preprocessing

    return compose(preprocessing(**preprocess))


def preprocess_one(transform: Any, path: str | Path) -> torch.Tensor:
    """``(1, S, S)`` input tensor of one file.

    Raises:
        RadiographReadError: the file cannot be read (reason in ``.reason``).
    """
    try:
        sample = transform({keys.IMAGE: str(path)})
    except Exception as err:
        cause = find_cause(err, RadiographReadError)
        if cause is not None:
            raise cause from err
        raise RadiographReadError(path, f"{type(err).__name__}: {err}") from err
    return torch.as_tensor(sample[keys.IMAGE])


def read_error_reason(err: RadiographReadError) -> str:
    """The reader's reason, without the file's path."""
    return str(getattr(err, "reason", err))


def dicom_header(path: str | Path) -> Any:
    """The DICOM data set of ``path`` without its pixels, for header checks: read as chestxr's
    reader reads it (also without preamble and file meta header); None for a PNG or JPEG.

    Raises:
        RadiographReadError: not a readable DICOM image.
    """
    from chestxr.io.dicom import read_dicom_dataset
    from chestxr.io.reader import sniff_format

    if sniff_format(path) in ("png", "jpeg"):
        return None
    try:
        return read_dicom_dataset(path, stop_before_pixels=True)
    except RadiographReadError:
        raise
    except Exception as err:
        raise RadiographReadError(path, f"{type(err).__name__}: {err}") from err


def header(path: str | Path) -> dict[str, Any]:
    """``read_header``'s cheap metadata (no patient identifiers)."""
    return read_header(path)


def cams(model: torch.nn.Module, images: torch.Tensor, method: str) -> TopFindingCams:
    """``(B, S, S)`` Grad-CAM maps in [0, 1], each of its image's most probable finding, ``(B,)``
    which output each explains (always 0 for a binary model), and the ``(B, K)`` fp32 logits of
    the same forward pass (the scores: no second forward)."""
    from chestxr.explain.cam import top_finding_cams

    return top_finding_cams(model, images, method=method, target_layer="net.layer4")


def overlay(path: str | Path, cam: np.ndarray, preprocess: dict[str, Any]) -> np.ndarray:
    """The CAM over the full-size source image: ``(H, W, 3)`` uint8."""
    from chestxr.data.transforms import geometry
    from chestxr.explain import blend_overlay, cam_to_original

    image = read_radiograph(
        path, frame=preprocess.get("frame"), voi=preprocess.get("voi", "header")
    )
    full = cam_to_original(
        cam,
        image.shape,
        geometry(image.shape, preprocess["image_size"], preprocess.get("resize", "pad")),
    )
    return blend_overlay(image, full)


def write_secondary_capture(rgb: np.ndarray, source: Any, out_path: Path) -> Path:
    """chestxr's Grad-CAM Secondary Capture writer."""
    from chestxr.explain.secondary_capture import write_secondary_capture as write

    return write(rgb, source, out_path, series_description="chestxr Grad-CAM (research use)")
