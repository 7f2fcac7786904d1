"""The Grad-CAM report of a split: maps, localisation and faithfulness metrics, the HTML page.

Each scan is read once: the reader's image (as the model's preprocessing reads it) gives both the
network input (resized and padded in memory, exactly as the data module does) and the displayed
image (the same array, reduced to ``display_side``). Every scan is predicted and explained, and
counts in the metrics; the page shows every error (FP, FN) and a seeded sample of the rest
(``sample_correct``), compact JPEG overlays and thumbnails, so it opens at any test-set size.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Compose
from PIL import Image, ImageDraw
from scipy.special import expit
from torch.utils.data import DataLoader

from chestxr import keys
from chestxr.data.datamodule import RadiographDataModule, make_items
from chestxr.data.prefetch import prefetch
from chestxr.data.transforms import geometry
from chestxr.explain.cam import cam_maps, check_methods, explain
from chestxr.explain.faithfulness import deletion_curve, randomisation_check
from chestxr.explain.localisation import boxes_to_input, cam_box_iou, pointing_game
from chestxr.explain.overlay import blend_overlay, cam_to_original
from chestxr.explain.report_page import ReportEntry, outcome, overlay_key, write_report_html
from chestxr.io import read_header
from chestxr.io.binning import bin_factor
from chestxr.models.module import ChestXRClassifier
from chestxr.utils.files import atomic_write_bytes, atomic_write_json
from chestxr.utils.ids import scan_id

log = logging.getLogger(__name__)
DISPLAY = "display"  # sample key: the read image reduced for display, (h, w) float32 in [0, 1]
ERRORS = ("FP", "FN")


def parse_boxes(text: str, output: str, binary: bool) -> list[tuple[float, float, float, float]]:
    """Boxes ``(x0, y0, x1, y1)`` in original pixels for one output from a manifest cell.

    Raises:
        ValueError: the cell is not JSON, or a box lacks ``x``, ``y``, ``width`` or ``height``.
    """
    if not text:
        return []
    try:
        boxes = json.loads(text)
        return [
            (b["x"], b["y"], b["x"] + b["width"], b["y"] + b["height"])
            for b in boxes
            if binary or b.get("label") in (None, "", output)
        ]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"manifest 'boxes' cell is not a list of boxes: {text[:80]!r}") from err


class KeepDisplayd:
    """Store the image as read, reduced to at most ``side`` pixels (area), under ``DISPLAY``."""

    def __init__(self, side: int) -> None:
        self.side = int(side)

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        d = dict(data)
        img = torch.as_tensor(np.asarray(d[keys.IMAGE], dtype=np.float32))[0]
        h, w = img.shape
        s = min(1.0, self.side / max(h, w))
        if s < 1.0:
            img = F.interpolate(img[None, None], size=(round(h * s), round(w * s)), mode="area")[
                0, 0
            ]
        d[DISPLAY] = img.numpy().copy()
        return d


def _collate(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return batch


def _jpeg(rgb_or_grey: np.ndarray, quality: int, side: int | None = None) -> bytes:
    img = Image.fromarray(rgb_or_grey)
    if side is not None and max(img.size) > side:
        img.thumbnail((side, side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def _overlay_rgb(
    shown: np.ndarray, cam: np.ndarray, boxes: Sequence[Sequence[float]]
) -> np.ndarray:
    rgb = blend_overlay(shown, cam, window=(0.0, 1.0))
    if boxes:
        img = Image.fromarray(rgb)
        draw = ImageDraw.Draw(img)
        for x0, y0, x1, y1 in boxes:
            draw.rectangle((x0, y0, x1, y1), outline=(0, 255, 0), width=2)
        rgb = np.asarray(img)
    return rgb


class _Reservoir:
    """A seeded uniform sample of ``size`` items from a stream (Algorithm R); None keeps all."""

    def __init__(self, size: int | None, seed: int) -> None:
        self.size, self.rng, self.seen, self.items = size, np.random.default_rng(seed), 0, []

    def slot(self) -> int | None:
        """Where the next item goes (``len(items)`` to append), or None when it is not kept."""
        self.seen += 1
        if self.size is None or len(self.items) < self.size:
            return len(self.items)
        j = int(self.rng.integers(0, self.seen))
        return j if j < self.size else None


def report_model(
    model: ChestXRClassifier,
    dm: RadiographDataModule,
    out_dir: Path,
    cfg: Mapping[str, Any],
    split: str = "test",
) -> dict[str, Any]:
    """Write the Grad-CAM report of a split into ``out_dir`` and return its CAM metrics.

    Writes ``report.html`` (self-contained), ``overlays/*.jpg`` (the shown scans' images and
    overlays) and ``cam_metrics.json`` (undefined values as ``null`` with a ``*_reason``).

    Args:
        model: the trained model.
        dm: its data module (manifest, split rows, preprocessing).
        out_dir: the report folder.
        cfg: the ``report`` config (``conf/report/default.yaml``).
        split: the split reported.

    Raises:
        ValueError: an unknown method in ``cfg["methods"]`` (before any scan is read), or an
            empty split.
    """
    methods = check_methods(list(cfg["methods"]))
    layer = str(cfg["target_layer"])
    names = list(model.output_names)
    binary = model.hparams.task == "binary"
    pre = dict(model.hparams.preprocess)
    manifest = dm.load()
    rows = dm.rows(split)
    n = len(rows) if cfg["max_scans"] is None else min(len(rows), int(cfg["max_scans"]))
    if n == 0:
        raise ValueError(f"the {split!r} split is empty: nothing to report")
    chain = dm.preprocessing_transforms()
    chain.insert(1, KeepDisplayd(int(cfg["display_side"])))
    items = _Mapped(make_items(manifest, rows[:n]), Compose(chain))  # one read per scan
    bs = int(cfg["batch_size"])
    loader = DataLoader(items, batch_size=bs, num_workers=dm.num_workers, collate_fn=_collate)
    thresholds = model.thresholds.cpu().numpy()
    cut = np.where(np.isnan(thresholds), 0.5, thresholds)
    device = next(model.parameters()).device
    tolerance = float(cfg["pointing_tolerance"]) * pre["image_size"] / 224  # px at 224 -> input
    scores: dict[tuple[str, str], dict[str, list[float]]] = {
        (o, m): {"hit": [], "strict": [], "iou": []} for o in names for m in methods
    }
    n_faith = int(cfg["faithfulness_scans"])
    faith_images: dict[int, list[torch.Tensor]] = {k: [] for k in range(len(names))}
    sample = cfg["sample_correct"]
    reservoir = _Reservoir(None if sample is None else int(sample), seed=int(cfg["seed"]))
    errors: list[dict[str, Any]] = []
    entries: list[ReportEntry] = []
    quality = int(cfg["jpeg_quality"])
    thumb_side = int(cfg["thumbnail_side"])
    id_key = str(cfg["id_key"])  # the same ids as predict's for the same files and key
    for batch in prefetch(loader):  # the next batches are read while this one is explained
        images = torch.stack([torch.as_tensor(b[keys.IMAGE]) for b in batch]).to(device)
        # scores and every method's maps from one (fp32) forward pass
        explained = explain(model, images, methods=methods, target_layer=layer)
        maps = explained.maps
        pred = {
            "prob": expit(explained.logits),
            "target": np.stack([np.asarray(b[keys.TARGET], np.float32) for b in batch]),
        }
        decisions = pred["prob"] >= cut
        for j, b in enumerate(batch):
            sid = scan_id(b[keys.PATH], key=id_key)
            read_shape = tuple(int(v) for v in b[keys.ORIG_SHAPE])
            geo = geometry(read_shape, pre["image_size"], pre.get("resize", "pad"))
            boxes = _boxes(
                manifest, int(b[keys.INDEX]), b[keys.PATH], names, binary, pre, read_shape
            )
            labels = {
                o: None if np.isnan(t) else float(t)
                for o, t in zip(names, pred["target"][j], strict=True)
            }
            entry = ReportEntry(
                scan_id=sid,
                image_png=None,
                probabilities={o: float(p) for o, p in zip(names, pred["prob"][j], strict=True)},
                decisions={o: bool(d) for o, d in zip(names, decisions[j], strict=True)},
                labels=labels,
            )
            for k, name in enumerate(names):
                in_boxes = boxes_to_input(boxes[k], geo)
                positive = pred["target"][j, k] == 1
                if positive and len(faith_images[k]) < n_faith:
                    faith_images[k].append(images[j].detach().cpu())
                if not (in_boxes and positive and decisions[j, k]):
                    continue
                for m in methods:
                    cam = maps[m][j, k]
                    hit = pointing_game(cam, in_boxes, tolerance=tolerance)
                    scores[(name, m)]["hit"].append(float(hit))
                    scores[(name, m)]["strict"].append(float(pointing_game(cam, in_boxes)))
                    scores[(name, m)]["iou"].append(float(cam_box_iou(cam, in_boxes)))
                    entry.extra[f"{name} {m} pointing game"] = "hit" if hit else "miss"
            entries.append(entry)
            is_error = any(outcome(entry.decisions[o], labels[o]) in ERRORS for o in names)
            slot = len(errors) if is_error else reservoir.slot()
            if slot is None:
                continue
            shown = b[DISPLAY]
            scale = shown.shape[0] / read_shape[0]
            files: dict[str, bytes] = {"": _jpeg(np.round(shown * 255).astype(np.uint8), quality)}
            for k in range(len(names)):
                shown_boxes = [tuple(v * scale for v in bx) for bx in boxes[k]]
                for m in methods:
                    cam = _cam_for_display(maps[m][j, k], read_shape, shown.shape, geo)
                    rgb = _overlay_rgb(shown, cam, shown_boxes)
                    files[f"{k}_{m}"] = _jpeg(rgb, quality)
                    if m == methods[0]:
                        files[f"{k}_thumb"] = _jpeg(rgb, 75, side=thumb_side)
            record = {"entry": entry, "files": files}
            target = errors if is_error else reservoir.items
            if slot == len(target):
                target.append(record)
            else:
                target[slot] = record
    for record in errors + reservoir.items:
        _attach_images(record["entry"], record["files"], out_dir / "overlays", names, methods)
    cam_metrics = _cam_metrics(model, faith_images, scores, names, methods, layer, n, tolerance)
    atomic_write_json(out_dir / "cam_metrics.json", cam_metrics, overwrite=True)
    summary = {
        f"{o} {m} {key}": v.get(key)
        for o, per in cam_metrics["outputs"].items()
        for m, v in per.items()
        for key in ("pointing_game", "pointing_game_strict", "randomisation_spearman")
    }
    write_report_html(
        out_dir / "report.html",
        entries,
        title="chestxr Grad-CAM report",
        summary={"scans": n, **summary},
        output_names=names,
    )
    log.info(
        "report: %s (%d scans, %d cards); CAM metrics: %s",
        out_dir / "report.html",
        n,
        len(errors) + len(reservoir.items),
        summary,
    )
    return cam_metrics


class _Mapped(torch.utils.data.Dataset):
    """Items through a transform, one file read per item."""

    def __init__(self, items: list[dict[str, Any]], transform: Compose) -> None:
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.transform(self.items[i])


def _boxes(
    manifest: Any,
    row: int,
    path: str,
    names: Sequence[str],
    binary: bool,
    pre: Mapping[str, Any],
    read_shape: tuple[int, int],
) -> list[list[tuple[float, ...]]]:
    """Per output, the manifest's boxes in the pixels of the image as read (after binning)."""
    cell = manifest.columns["boxes"][row] if "boxes" in manifest.columns else ""
    per = [parse_boxes(cell, name, binary) for name in names]
    if not any(per):
        return per
    k = 1
    if pre.get("binning", True):  # preprocessing()'s default
        head = read_header(path)  # the original size (header only: no pixel data read)
        side = "longest" if pre.get("resize", "pad") == "pad" else "shortest"
        k = bin_factor((int(head["rows"]), int(head["columns"])), int(pre["image_size"]), side)
    return [[tuple(v / k for v in bx) for bx in boxes] for boxes in per]


def _cam_for_display(
    cam: np.ndarray, read_shape: tuple[int, int], shown_shape: tuple[int, ...], geo: dict
) -> np.ndarray:
    """A CAM on the model input mapped onto the displayed (possibly reduced) image."""
    full = torch.from_numpy(cam_to_original(cam, read_shape, geo))[None, None]
    return F.interpolate(full, size=tuple(shown_shape), mode="area")[0, 0].numpy()


def _attach_images(
    entry: ReportEntry,
    files: dict[str, bytes],
    folder: Path,
    names: Sequence[str],
    methods: Sequence[str],
) -> None:
    """Write a shown scan's JPEGs and point its entry at them."""
    sid = entry.scan_id
    entry.image_png = atomic_write_bytes(folder / f"{sid}.jpg", files[""], overwrite=True)
    for k, name in enumerate(names):
        for m in methods:
            key = m if len(names) == 1 else overlay_key(name, m)
            path = folder / f"{sid}_{k}_{m}.jpg"
            entry.overlays[key] = atomic_write_bytes(path, files[f"{k}_{m}"], overwrite=True)
        thumb = folder / f"{sid}_{k}_thumb.jpg"
        entry.thumbnails[name] = atomic_write_bytes(thumb, files[f"{k}_thumb"], overwrite=True)


def _cam_metrics(
    model: ChestXRClassifier,
    faith_images: dict[int, list[torch.Tensor]],
    scores: dict[tuple[str, str], dict[str, list[float]]],
    names: Sequence[str],
    methods: Sequence[str],
    layer: str,
    n: int,
    tolerance: float,
) -> dict[str, Any]:
    """``cam_metrics.json``'s content; an undefined value is None with a reason beside it."""
    outputs: dict[str, dict[str, dict[str, Any]]] = {}
    for k, name in enumerate(names):
        outputs[name] = faithfulness(model, faith_images[k], k, methods, layer)
        for m in methods:
            s = scores[(name, m)]
            got = {
                "pointing_game": float(np.mean(s["hit"])) if s["hit"] else None,
                "pointing_game_strict": float(np.mean(s["strict"])) if s["hit"] else None,
                "pointing_game_n": len(s["hit"]),
                "iou": float(np.mean(s["iou"])) if s["hit"] else None,
            }
            if not s["hit"]:
                got["pointing_game_reason"] = "no true positive with a lesion box"
            outputs[name][m].update(got)
    return {
        "schema": "chestxr.cam_metrics/1",
        "n_scans": n,
        "target_layer": layer,
        "pointing_tolerance_px": tolerance,
        "outputs": outputs,
    }


def faithfulness(
    model: ChestXRClassifier,
    images: Sequence[torch.Tensor],
    k: int,
    methods: Sequence[str],
    layer: str,
) -> dict[str, dict[str, Any]]:
    """Randomisation check and deletion curves of each CAM method on a few positive scans.

    Returns:
        method -> ``faithfulness_n``, ``randomisation_spearman``, ``deletion_auc``,
        ``deletion_auc_random``; a value that is undefined (no positive scan, or every trained
        map flat, as after a one-epoch run) is None with ``*_reason`` beside it.
    """
    if not images:
        reason = "no positive scan among the reported ones"
        return {
            m: {
                "faithfulness_n": 0,
                "randomisation_spearman": None,
                "randomisation_spearman_reason": reason,
                "deletion_auc": None,
                "deletion_auc_random": None,
                "deletion_reason": reason,
            }
            for m in methods
        }
    device = next(model.parameters()).device
    batch = torch.stack(list(images)).to(device)
    out: dict[str, dict[str, Any]] = {}
    for m in methods:
        rand = randomisation_check(model, batch, output_index=k, method=m, target_layer=layer)
        cams = cam_maps(model, batch, methods=[m], target_layer=layer, outputs=[k])[m][:, 0]
        dele = deletion_curve(model, batch, cams, output_index=k)
        rho = rand["spearman_mean"]
        out[m] = {
            "faithfulness_n": len(images),
            "randomisation_spearman": None if np.isnan(rho) else rho,
            "deletion_auc": dele["mean_auc"],
            "deletion_auc_random": dele["random_mean_auc"],
        }
        if np.isnan(rho):
            out[m]["randomisation_spearman_reason"] = (
                f"every trained map of the {len(images)} scans is flat (constant): a rank "
                "correlation is undefined"
            )
    return out
