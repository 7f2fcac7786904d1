"""``python -m chestxr.report ckpt_path=PATH [data=...]``: Grad-CAM report of held-out scans.

Per scan: the windowed image at its original aspect, one overlay per CAM method and output,
probability, decision and ground truth; where lesion boxes are known, the pointing game and the IoU
of the thresholded CAM; on a few scans, the model-randomisation check and deletion curves. Writes
``report.html`` (self-contained), ``overlays/*.png`` and ``cam_metrics.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from chestxr import keys
from chestxr.data.datamodule import RadiographDataModule
from chestxr.data.transforms import geometry
from chestxr.explain.cam import compute_cams
from chestxr.explain.faithfulness import deletion_curve, randomisation_check
from chestxr.explain.html_report import ReportEntry, overlay_key, write_report_html
from chestxr.explain.localisation import boxes_to_input, cam_box_iou, pointing_game
from chestxr.explain.overlay import cam_to_original, overlay_figure
from chestxr.inference import load_model, predict_dataset
from chestxr.io import read_radiograph
from chestxr.models.module import ChestXRClassifier
from chestxr.utils.files import atomic_write_json, ensure_fresh_run_dir

log = logging.getLogger(__name__)
DISPLAY_SIDE = 512  # longest side of the images shown in the report


def scan_id(path: str) -> str:
    """A stable anonymous identifier of a scan (file names can carry patient identifiers)."""
    return "scan-" + hashlib.sha256(path.encode()).hexdigest()[:10]


def parse_boxes(text: str, output: str, binary: bool) -> list[tuple[float, float, float, float]]:
    """Boxes ``(x0, y0, x1, y1)`` in original pixels for one output from a manifest cell."""
    if not text:
        return []
    try:
        boxes = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"manifest 'boxes' cell is not JSON: {text[:80]!r}") from err
    return [
        (b["x"], b["y"], b["x"] + b["width"], b["y"] + b["height"])
        for b in boxes
        if binary or b.get("label") in (None, "", output)
    ]


def plt_imsave(path: Path, image: np.ndarray) -> None:
    """Save a grey image in [0, 1] as PNG."""
    from matplotlib.image import imsave

    imsave(path, np.clip(image, 0, 1), cmap="gray", vmin=0, vmax=1)


def display_image(path: str, preprocess: dict[str, Any]) -> tuple[np.ndarray, tuple[int, int]]:
    """The windowed image reduced to at most DISPLAY_SIDE pixels, and its original shape."""
    img = read_radiograph(path, frame=preprocess.get("frame"), voi=preprocess.get("voi", "header"))
    h, w = img.shape
    s = min(1.0, DISPLAY_SIDE / max(h, w))
    if s < 1.0:
        t = torch.from_numpy(img)[None, None]
        img = F.interpolate(t, size=(round(h * s), round(w * s)), mode="area")[0, 0].numpy()
    return img, (h, w)


def _cam_for_display(
    cam: np.ndarray,
    orig_shape: tuple[int, int],
    shown_shape: tuple[int, ...],
    geo: dict[str, float],
) -> np.ndarray:
    """A CAM on the model input mapped onto the displayed (possibly reduced) original image."""
    full = torch.from_numpy(cam_to_original(cam, orig_shape, geo))[None, None]
    return F.interpolate(full, size=tuple(shown_shape), mode="area")[0, 0].numpy()


def report_model(
    model: ChestXRClassifier,
    dm: RadiographDataModule,
    out_dir: Path,
    cfg: DictConfig | dict[str, Any],
    split: str = "test",
) -> dict[str, Any]:
    """Write the Grad-CAM report of a split into ``out_dir`` and return its CAM metrics."""
    (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
    manifest = dm.load()
    ds = dm.dataset(split, train=False)
    n = len(ds) if cfg["max_scans"] is None else min(len(ds), int(cfg["max_scans"]))
    ds = torch.utils.data.Subset(ds, range(n))
    bs = int(cfg["batch_size"])
    pred = predict_dataset(model, ds, batch_size=bs)
    thresholds = model.thresholds.cpu().numpy()
    decisions = pred["prob"] >= np.where(np.isnan(thresholds), 0.5, thresholds)
    names = model.output_names
    binary = model.hparams.task == "binary"
    pre = dict(model.hparams.preprocess)
    methods = list(cfg["methods"])
    layer = cfg["target_layer"]
    device = next(model.parameters()).device
    hits = {(o, m): [] for o in names for m in methods}
    strict = {(o, m): [] for o in names for m in methods}
    tolerance = float(cfg["pointing_tolerance"]) * pre["image_size"] / 224  # px at 224 -> input
    ious = {(o, m): [] for o in names for m in methods}
    entries: list[ReportEntry] = []
    for start in range(0, n, bs):
        batch = [ds[i] for i in range(start, min(start + bs, n))]
        images = torch.stack([torch.as_tensor(b[keys.IMAGE]) for b in batch]).to(device)
        cams = {
            (k, m): compute_cams(model, images, output_index=k, method=m, target_layer=layer)
            for k in range(len(names))
            for m in methods
        }
        for j, b in enumerate(batch):
            i, path, row = start + j, str(b[keys.PATH]), int(b[keys.INDEX])
            sid = scan_id(path)
            shown, orig_shape = display_image(path, pre)
            geo = geometry(orig_shape, pre["image_size"], pre.get("resize", "pad"))
            image_png = out_dir / "overlays" / f"{sid}.png"
            plt_imsave(image_png, shown)
            overlays: dict[str, Path] = {}
            extra: dict[str, str] = {}
            for k, name in enumerate(names):
                cell = manifest.columns["boxes"][row] if "boxes" in manifest.columns else ""
                boxes = parse_boxes(cell, name, binary)
                in_boxes = boxes_to_input(boxes, geo)
                scale = shown.shape[0] / orig_shape[0]
                shown_boxes = [tuple(v * scale for v in bx) for bx in boxes]
                scored = bool(in_boxes) and pred["target"][i, k] == 1 and decisions[i, k]
                for m in methods:
                    cam = cams[(k, m)][j]
                    if scored:
                        hit = pointing_game(cam, in_boxes, tolerance=tolerance)
                        hits[(name, m)].append(float(hit))
                        strict[(name, m)].append(float(pointing_game(cam, in_boxes)))
                        ious[(name, m)].append(float(cam_box_iou(cam, in_boxes)))
                        extra[f"{name} {m} pointing game"] = "hit" if hit else "miss"
                    key = m if len(names) == 1 else overlay_key(name, m)
                    png = out_dir / "overlays" / f"{sid}_{k}_{m}.png"
                    overlay_figure(
                        shown,
                        _cam_for_display(cam, orig_shape, shown.shape, geo),
                        png,
                        title=f"{name} p={pred['prob'][i, k]:.2f} - {m}",
                        boxes=shown_boxes or None,
                    )
                    overlays[key] = png
            entries.append(
                ReportEntry(
                    scan_id=sid,
                    image_png=image_png,
                    overlays=overlays,
                    probabilities={o: float(pred["prob"][i, k]) for k, o in enumerate(names)},
                    decisions={o: bool(decisions[i, k]) for k, o in enumerate(names)},
                    labels={
                        o: None if np.isnan(pred["target"][i, k]) else float(pred["target"][i, k])
                        for k, o in enumerate(names)
                    },
                    extra=extra,
                )
            )
    cam_metrics = {
        "schema": "chestxr.cam_metrics/1",
        "n_scans": n,
        "target_layer": layer,
        "pointing_tolerance_px": tolerance,
        "outputs": {
            o: faithfulness(model, ds, pred, k, methods, layer, cfg) for k, o in enumerate(names)
        },
    }
    for (o, m), h in hits.items():
        cam_metrics["outputs"][o][m].update(
            pointing_game=float(np.mean(h)) if h else None,
            pointing_game_strict=float(np.mean(strict[(o, m)])) if h else None,
            pointing_game_n=len(h),
            iou=float(np.mean(ious[(o, m)])) if h else None,
        )
    atomic_write_json(out_dir / "cam_metrics.json", cam_metrics)
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
    log.info("report: %s (%d scans); CAM metrics: %s", out_dir / "report.html", n, summary)
    return cam_metrics


def faithfulness(
    model: ChestXRClassifier,
    ds: torch.utils.data.Dataset,
    pred: dict[str, Any],
    k: int,
    methods: list[str],
    layer: str,
    cfg: DictConfig | dict[str, Any],
) -> dict[str, dict[str, Any]]:
    """Randomisation check and deletion curves of each CAM method on a few positive scans."""
    n_faith = int(cfg["faithfulness_scans"])
    chosen = [i for i in range(len(ds)) if pred["target"][i, k] == 1][:n_faith]
    out: dict[str, dict[str, Any]] = {m: {} for m in methods}
    if not chosen:
        return out
    device = next(model.parameters()).device
    images = torch.stack([torch.as_tensor(ds[i][keys.IMAGE]) for i in chosen]).to(device)
    for m in methods:
        rand = randomisation_check(model, images, output_index=k, method=m, target_layer=layer)
        cams = compute_cams(model, images, output_index=k, method=m, target_layer=layer)
        dele = deletion_curve(model, images, cams, output_index=k)
        out[m] = {
            "faithfulness_n": len(chosen),
            "randomisation_spearman": rand["spearman_mean"],
            "deletion_auc": dele["mean_auc"],
            "deletion_auc_random": dele["random_mean_auc"],
        }
    return out


def report(cfg: DictConfig) -> dict[str, Any]:
    """Report ``cfg.ckpt_path`` on the data config's ``cfg.split`` split."""
    from chestxr.evaluation.run import data_for_model

    out_dir = ensure_fresh_run_dir(cfg.paths.output_dir)
    model = load_model(cfg.ckpt_path)
    return report_model(model, data_for_model(cfg.data, model), out_dir, cfg.report, cfg.split)


@hydra.main(version_base="1.3", config_path="../conf", config_name="report")
def main(cfg: DictConfig) -> None:
    report(cfg)


if __name__ == "__main__":
    main()
