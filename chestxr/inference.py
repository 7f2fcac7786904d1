"""Load a trained model and run it over a data set: the loop evaluate, report and predict share."""

from __future__ import annotations

import functools
import logging
import os
import pickle
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy.special import expit
from torch.utils.data import DataLoader, Dataset

from chestxr import keys
from chestxr.data.prefetch import prefetch
from chestxr.io import RadiographReadError, read_header
from chestxr.models.module import ChestXRClassifier
from chestxr.utils import ids as _ids
from chestxr.utils.checkpoints import refused_message
from chestxr.utils.files import atomic_write_csv
from chestxr.utils.hardware import autocast, best_precision, inference_device
from chestxr.utils.ids import anonymous_id

if TYPE_CHECKING:
    from chestxr.explain.cam import TopFindingCams

log = logging.getLogger(__name__)


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
        model = ChestXRClassifier.load_from_checkpoint(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(refused_message(path)) from None
    except (KeyError, TypeError, RuntimeError) as err:
        raise ValueError(f"{path} is not a chestxr checkpoint ({err})") from err
    # checkpoints from before the reader's binning option were trained without it
    model.hparams.preprocess.setdefault("binning", False)
    return model.eval().to(device)


def infer_batches(
    model: ChestXRClassifier,
    loader: Iterable[dict[str, Any]],
    *,
    precision: str | None = None,
    cam_method: str | None = None,
    target_layer: str = "net.layer4",
    read_ahead: int = 2,
) -> Iterator[tuple[dict[str, Any], torch.Tensor, TopFindingCams | None]]:
    """The one inference loop: each batch of ``loader``, its logits and, asked for, its maps.

    The next ``read_ahead`` batches are read in a background thread while this one is scored
    (:func:`~chestxr.data.prefetch.prefetch`), so reading and decoding overlap the network. The
    forward pass runs under ``torch.inference_mode()`` and autocast at ``precision``. With
    ``cam_method`` the scores come from the explaining pass instead (one forward pass per batch
    for both; fp32, the model's own dtype, whatever ``precision``). A batch with no images (all
    unreadable) gets empty logits.

    Args:
        model: the classifier, in eval mode.
        loader: batches with ``keys.IMAGE`` ``(B, 1, S, S)``.
        precision: ``32``, ``bf16-mixed``...; None picks the best for the device.
        cam_method: also each image's map of its most probable finding
            (:func:`~chestxr.explain.cam.top_finding_cams`) with this method.
        target_layer: the layer the maps are taken at.
        read_ahead: batches read ahead in the background (0: none, read in this thread).

    Yields:
        (batch, float32 logits ``(B, K)`` on the CPU, the maps or None).
    """
    device = next(model.parameters()).device
    precision = precision or best_precision(device.type)
    model.eval()
    for batch in prefetch(loader, read_ahead):
        images = batch[keys.IMAGE].to(device)
        if len(images) == 0:
            yield batch, torch.empty(0, len(model.output_names)), None
            continue
        if cam_method is not None:
            from chestxr.explain.cam import top_finding_cams

            cams = top_finding_cams(model, images, method=cam_method, target_layer=target_layer)
            yield batch, torch.from_numpy(cams.logits), cams
            continue
        with torch.inference_mode(), autocast(device, precision):
            logits = model(images)
        yield batch, logits.float().cpu(), None


def predict_dataset(
    model: ChestXRClassifier,
    dataset: Dataset,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    precision: str | None = "32-true",
) -> dict[str, np.ndarray]:
    """Probabilities for every sample of a dataset, with their paths, patients and targets.

    Metrics and operating points are computed from these, so the default precision is fp32 on
    every machine: bf16 keeps ~3 significant digits, enough to turn close scores into ties and
    move an AUC with the CPU model (None picks the device's fastest, as ``predict`` does).

    Returns:
        ``prob`` and ``logit`` ``(N, K)``, ``target`` ``(N, K)`` (NaN unknown), ``path``,
        ``patient_id``, ``index`` ``(N,)``.
    """
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    out: dict[str, list[Any]] = {
        "logit": [],
        "target": [],
        "path": [],
        "patient_id": [],
        "index": [],
    }
    for batch, logits, _ in infer_batches(model, loader, precision=precision):
        out["logit"].append(logits.numpy())
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
    result["prob"] = expit(result["logit"])  # no overflow warning at large negative logits
    return result


def predict_files(
    model: ChestXRClassifier,
    files: list[Path],
    out_dir: Path,
    *,
    unreadable: Sequence[tuple[Path, str]] = (),
    batch_size: int = 32,
    num_workers: int = 0,
    cams: bool = False,
    cam_method: str = "gradcam",
    target_layer: str = "net.layer4",
    secondary_capture: bool = False,
    include_paths: bool = False,
    id_key: str = "",
    precision: str | None = "32-true",
) -> dict[str, Any]:
    """Predict unlabelled scans; write ``predictions.csv``, ``unreadable.csv`` and CAM overlays.

    Scans are named by an anonymous ``scan_id`` (a keyed hash of the path with ``id_key``) and
    studies by ``study_id`` (of the StudyInstanceUID): no file name, path or header identifier
    reaches the CSVs, the overlays' names and titles, or the log, unless ``include_paths``.

    Args:
        model: the classifier; decisions use its stored operating point (0.5 when it has none).
        files: the scans.
        out_dir: the run folder.
        unreadable: files already known to be unreadable, with their reasons.
        batch_size: scans per forward pass.
        num_workers: DataLoader workers.
        cams: also write a CAM overlay PNG per scan under ``out_dir/cams``.
        cam_method: CAM method.
        target_layer: layer the CAM is taken at.
        secondary_capture: with ``cams``, also a DICOM Secondary Capture per DICOM source.
        include_paths: add a ``file`` column with the path (opt-in: it can identify a patient).
        id_key: secret for the pseudonyms (HMAC); without it they are plain SHA-256 prefixes.
        precision: forward-pass precision; fp32 by default, as evaluation and the DICOM node,
            so a scan near the threshold gets the same decision everywhere; None picks the
            device's fastest. With ``cams`` the scores come from the explaining pass (fp32).

    Returns:
        ``predicted``, ``unreadable`` (counts), ``out_dir``.
    """
    from chestxr.data.inputs import FAILED, SafeDataset, collate_safe

    thresholds = model.thresholds.cpu().numpy()
    if np.isnan(thresholds).any():
        log.warning("the checkpoint holds no operating point; deciding at 0.5")
        thresholds = np.where(np.isnan(thresholds), 0.5, thresholds)
    loader = DataLoader(
        SafeDataset(files, dict(model.hparams.preprocess)),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_safe,
    )
    scan_id = functools.partial(_ids.scan_id, key=id_key)
    rows: list[list[Any]] = []
    bad = [(str(p), r) for p, r in unreadable]
    batches = infer_batches(
        model,
        loader,
        precision=precision,
        cam_method=cam_method if cams else None,
        target_layer=target_layer,
    )
    for batch, logits, maps in batches:
        bad += batch[FAILED]
        paths = batch[keys.PATH]
        if not paths:
            continue
        prob = torch.sigmoid(logits).numpy()
        outcomes = [""] * len(paths)
        if maps is not None:
            from chestxr.explain.scan_overlay import write_scan_overlays

            outcomes = write_scan_overlays(
                model,
                maps,
                paths,
                [scan_id(p) for p in paths],
                out_dir / "cams",
                secondary_capture=secondary_capture,
            )
        for path, p, outcome in zip(paths, prob, outcomes, strict=True):
            row = [scan_id(path), _study_id(path, id_key)] + ([path] if include_paths else [])
            row += [f"{v:.6f}" for v in p] + [
                int(v >= t) for v, t in zip(p, thresholds, strict=True)
            ]
            if cams and secondary_capture:
                row.append(outcome if include_paths else _ids.redact(outcome, path, scan_id(path)))
            rows.append(row)
    names = model.output_names
    header = ["scan_id", "study_id"] + (["file"] if include_paths else [])
    header += [f"prob_{n}" for n in names] + [f"decision_{n}" for n in names]
    header += ["secondary_capture"] if cams and secondary_capture else []
    atomic_write_csv(out_dir / "predictions.csv", header, rows)
    bad_rows = [
        [scan_id(p), p, r] if include_paths else [scan_id(p), _ids.redact(r, p, scan_id(p))]
        for p, r in bad
    ]
    bad_header = ["scan_id", "file", "reason"] if include_paths else ["scan_id", "reason"]
    atomic_write_csv(out_dir / "unreadable.csv", bad_header, bad_rows)
    for row in bad_rows:
        log.warning("unreadable: %s", ": ".join(row))
    log.info(
        "predicted %d of %d files into %s (%d unreadable, listed in unreadable.csv)",
        len(rows),
        len(rows) + len(bad),
        out_dir,
        len(bad),
    )
    return {"predicted": len(rows), "unreadable": len(bad), "out_dir": str(out_dir)}


def _study_id(path: str, key: str) -> str:
    """Anonymous study id: of the DICOM StudyInstanceUID, else of the path (one scan, one study)."""
    try:
        uid = read_header(path).get("study_uid")
    except RadiographReadError:
        uid = None
    return anonymous_id(uid or os.path.abspath(path), prefix="study", key=key)
