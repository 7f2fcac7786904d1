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
from chestxr.explain.html_report import ReportEntry, write_report_html
from chestxr.explain.localisation import cam_box_iou, pointing_game
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


def display_image(path: str, preprocess: dict[str, Any]) -> tuple[np.ndarray, tuple[int, int]]:
    """The windowed image reduced to at most DISPLAY_SIDE pixels, and its original shape."""
    img = read_radiograph(path, frame=preprocess.get("frame"), voi=preprocess.get("voi", "header"))
    h, w = img.shape
    s = min(1.0, DISPLAY_SIDE / max(h, w))
    if s < 1.0:
        t = torch.from_numpy(img)[None, None]
        img = F.interpolate(t, size=(round(h * s), round(w * s)), mode="area")[0, 0].numpy()
    return img, (h, w)


def report_model(
    model: ChestXRClassifier,
    dm: RadiographDataModule,
    out_dir: Path,
    cfg: DictConfig | dict[str, Any],
    split: str = "test",
) -> dict[str, Any]:
    """Write the Grad-CAM report of a split into ``out_dir`` and return its CAM metrics."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "overlays").mkdir(exist_ok=True)
    manifest = dm.load()
    ds = dm.dataset(split, train=False)
    n = len(ds) if cfg.get("max_scans") is None else min(len(ds), int(cfg["max_scans"]))
    ds = torch.utils.data.Subset(ds, range(n))
    pred = predict_dataset(model, ds, batch_size=cfg.get("batch_size", 16))
    thresholds = model.thresholds.cpu().numpy()
    thresholds = np.where(np.isnan(thresholds), 0.5, thresholds)
    decisions = pred["prob"] >= thresholds
    names = model.output_names
    binary = model.hparams.task == "binary"
    pre = dict(model.hparams.preprocess)
    methods = list(cfg.get("methods", ["gradcam"]))
    layer = cfg.get("target_layer", "net.layer4")
    has_boxes = "boxes" in manifest.columns
    hits: dict[str, dict[str, list[float]]] = {o: {m: [] for m in methods} for o in names}
    ious: dict[str, dict[str, list[float]]] = {o: {m: [] for m in methods} for o in names}
    entries: list[ReportEntry] = []
    bs = int(cfg.get("batch_size", 16))
    for start in range(0, n, bs):
        batch = [ds[i] for i in range(start, min(start + bs, n))]
        images = torch.stack([torch.as_tensor(b[keys.IMAGE]) for b in batch])
        images = images.to(next(model.parameters()).device)
        cams = {
            (k, m): compute_cams(model, images, output_index=k, method=m, target_layer=layer)
            for k in range(len(names))
            for m in methods
        }
        for j, b in enumerate(batch):
            i = start + j
            path, row = str(b[keys.PATH]), int(b[keys.INDEX])
            sid = scan_id(path)
            shown, orig_shape = display_image(path, pre)
            geo = geometry(orig_shape, pre["image_size"], pre.get("resize", "pad"))
            overlays: dict[str, Path] = {}
            extra: dict[str, str] = {}
            for k, name in enumerate(names):
                boxes = (
                    parse_boxes(manifest.columns["boxes"][row], name, binary) if has_boxes else []
                )
                in_boxes = [
                    (
                        x0 * geo["scale_x"] + geo["pad_left"],
                        y0 * geo["scale_y"] + geo["pad_top"],
                        x1 * geo["scale_x"] + geo["pad_left"],
                        y1 * geo["scale_y"] + geo["pad_top"],
                    )
                    for x0, y0, x1, y1 in boxes
                ]
                sd = shown.shape[0] / orig_shape[0]
                shown_boxes = [tuple(v * sd for v in bx) for bx in boxes]
                true_positive = pred["target"][i, k] == 1 and decisions[i, k]
                for m in methods:
                    cam = cams[(k, m)][j]
                    if in_boxes and true_positive:
                        hits[name][m].append(float(pointing_game(cam, in_boxes)))
                        ious[name][m].append(float(cam_box_iou(cam, in_boxes)))
                    label = f"{name} {m}"
                    png = out_dir / "overlays" / f"{sid}_{name}_{m}.png".replace(" ", "_")
                    title = (
                        f"{name}: p={pred['prob'][i, k]:.2f} "
                        f"({'positive' if decisions[i, k] else 'negative'}) - {m}"
                    )
                    overlay_figure(
                        shown,
                        cam_to_original(cam, shown.shape, geo),
                        png,
                        title=title,
                        boxes=shown_boxes or None,
                    )
                    overlays[label] = png
                    if in_boxes and true_positive:
                        extra[f"pointing game {label}"] = "hit" if hits[name][m][-1] else "miss"
            entries.append(
                ReportEntry(
                    scan_id=sid,
                    image_png=overlays[next(iter(overlays))],
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

    cam_metrics: dict[str, Any] = {"schema": "chestxr.cam_metrics/1", "n_scans": n, "outputs": {}}
    n_faith = min(int(cfg.get("faithfulness_scans", 16)), n)
    for k, name in enumerate(names):
        per: dict[str, Any] = {}
        positives = [i for i in range(n) if pred["target"][i, k] == 1][:n_faith] or list(
            range(n_faith)
        )
        sample = (
            torch.stack([torch.as_tensor(ds[i][keys.IMAGE]) for i in positives])
            if positives
            else None
        )
        for m in methods:
            entry: dict[str, Any] = {
                "pointing_game": float(np.mean(hits[name][m])) if hits[name][m] else None,
                "pointing_game_n": len(hits[name][m]),
                "iou": float(np.mean(ious[name][m])) if ious[name][m] else None,
            }
            if sample is not None:
                rand = randomisation_check(
                    model, sample, output_index=k, method=m, target_layer=layer
                )
                cams_s = compute_cams(model, sample, output_index=k, method=m, target_layer=layer)
                dele = deletion_curve(model, sample, cams_s, output_index=k)
                entry["randomisation_spearman"] = rand.get("mean")
                entry["deletion"] = {key: v for key, v in dele.items() if not isinstance(v, list)}
            per[m] = entry
        cam_metrics["outputs"][name] = per
    atomic_write_json(out_dir / "cam_metrics.json", cam_metrics)
    summary = {
        f"{o} {m} pointing game": v["pointing_game"]
        for o, per in cam_metrics["outputs"].items()
        for m, v in per.items()
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


def report(cfg: DictConfig) -> dict[str, Any]:
    """Report ``cfg.ckpt_path`` on the data config's ``cfg.split`` split."""
    from chestxr.evaluate import data_for_model

    out_dir = ensure_fresh_run_dir(cfg.paths.output_dir)
    model = load_model(cfg.ckpt_path)
    return report_model(model, data_for_model(cfg.data, model), out_dir, cfg.report, cfg.split)


@hydra.main(version_base="1.3", config_path="../conf", config_name="report")
def main(cfg: DictConfig) -> None:
    report(cfg)


if __name__ == "__main__":
    main()
