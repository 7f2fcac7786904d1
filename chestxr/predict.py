"""``python -m chestxr.predict ckpt_path=PATH input=FOLDER_OR_MANIFEST``: scans nobody labelled.

Writes ``predictions.csv`` (file, anonymised study id, probability and decision per output at the
model's stored operating point) and ``unreadable.csv`` (file, reason) into the run folder, and,
when asked, a Grad-CAM overlay per scan (PNG, and a DICOM Secondary Capture for DICOM sources).

Exit status: 0 when every file was predicted; 2 when some were unreadable (the others are
predicted); 1 when nothing could be predicted or the arguments are wrong.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from chestxr import keys
from chestxr.data.transforms import compose, preprocessing
from chestxr.io import RadiographReadError, read_header
from chestxr.utils.files import atomic_write_text, ensure_fresh_run_dir
from chestxr.utils.hardware import autocast, best_precision

log = logging.getLogger(__name__)
EXIT_OK, EXIT_FAILED, EXIT_PARTIAL = 0, 1, 2
ERROR = "error"


def find_inputs(source: str | Path, extensions: list[str]) -> list[Path]:
    """The files to predict: a folder walked recursively, or the ``path`` column of a CSV.

    Raises:
        FileNotFoundError: the input does not exist.
        ValueError: a CSV without a ``path`` column, or a folder with no candidate file.
    """
    src = Path(source).expanduser()
    if not src.exists():
        raise FileNotFoundError(f"input not found: {src}")
    if src.is_file():
        with open(src, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if "path" not in (reader.fieldnames or []):
                raise ValueError(f"{src}: a manifest input needs a 'path' column")
            return [
                p if p.is_absolute() else src.parent / p for p in (Path(r["path"]) for r in reader)
            ]
    wanted = {e.lower() for e in extensions}
    files = sorted(
        p
        for p in src.rglob("*")
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in wanted
    )
    if not files:
        raise ValueError(f"{src}: no file with an extension in {sorted(wanted)}")
    return files


class SafeDataset(Dataset):
    """Preprocesses files, turning a read failure into a sample that carries its reason."""

    def __init__(self, files: list[Path], preprocess: dict[str, Any]) -> None:
        self.files = files
        self.transform = compose(preprocessing(**preprocess))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path = str(self.files[i])
        try:
            sample = self.transform({keys.IMAGE: path})
            return {keys.IMAGE: sample[keys.IMAGE], keys.PATH: path, ERROR: ""}
        except Exception as err:
            cause = err
            while cause is not None and not isinstance(cause, RadiographReadError):
                cause = cause.__cause__
            reason = cause.reason if cause is not None else f"{type(err).__name__}: {err}"
            return {keys.IMAGE: None, keys.PATH: path, ERROR: reason}


def _collate(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return batch


def study_id(path: str) -> str:
    """Anonymised study id: a hash of the DICOM StudyInstanceUID (or of the path)."""
    try:
        uid = read_header(path).get("study_uid") or path
    except RadiographReadError:
        uid = path
    return "study-" + hashlib.sha256(str(uid).encode()).hexdigest()[:10]


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Predict every input file; returns counts and the output paths."""
    from chestxr.inference import load_model

    out_dir = ensure_fresh_run_dir(cfg.paths.output_dir)
    model = load_model(cfg.ckpt_path)
    device = next(model.parameters()).device
    precision = best_precision(device.type)
    files = find_inputs(cfg.input, list(cfg.extensions))
    thresholds = model.thresholds.cpu().numpy()
    if np.isnan(thresholds).any():
        log.warning("the checkpoint holds no operating point; deciding at 0.5")
        thresholds = np.where(np.isnan(thresholds), 0.5, thresholds)
    names = model.output_names
    loader = DataLoader(
        SafeDataset(files, dict(model.hparams.preprocess)),
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        collate_fn=_collate,
    )
    rows, bad = [], []
    for batch in loader:
        good = [b for b in batch if not b[ERROR]]
        bad += [(b[keys.PATH], b[ERROR]) for b in batch if b[ERROR]]
        if not good:
            continue
        images = torch.stack([torch.as_tensor(b[keys.IMAGE]) for b in good]).to(device)
        with torch.inference_mode(), autocast(device, precision):
            prob = torch.sigmoid(model(images).float()).cpu().numpy()
        for b, p in zip(good, prob, strict=True):
            rows.append(
                [b[keys.PATH], study_id(b[keys.PATH])]
                + [f"{v:.6f}" for v in p]
                + [int(v >= t) for v, t in zip(p, thresholds, strict=True)]
            )
        if cfg.cams:
            _write_cams(model, images, good, out_dir, cfg)
    header = ["file", "study_id"] + [f"prob_{n}" for n in names] + [f"decision_{n}" for n in names]
    _write_csv(out_dir / "predictions.csv", header, rows)
    _write_csv(out_dir / "unreadable.csv", ["file", "reason"], bad)
    for path, reason in bad:
        log.warning("unreadable: %s: %s", path, reason)
    log.info(
        "predicted %d of %d files into %s (%d unreadable, listed in unreadable.csv)",
        len(rows),
        len(files),
        out_dir,
        len(bad),
    )
    return {"predicted": len(rows), "unreadable": len(bad), "out_dir": str(out_dir)}


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _write_cams(
    model: torch.nn.Module,
    images: torch.Tensor,
    samples: list[dict[str, Any]],
    out_dir: Path,
    cfg: DictConfig,
) -> None:
    from chestxr.data.transforms import geometry
    from chestxr.explain import blend_overlay, cam_to_original, compute_cams, overlay_figure
    from chestxr.explain.secondary_capture import write_secondary_capture
    from chestxr.io import read_radiograph

    pre = dict(model.hparams.preprocess)
    cams = compute_cams(
        model, images, output_index=0, method=cfg.cam_method, target_layer=cfg.target_layer
    )
    (out_dir / "cams").mkdir(exist_ok=True)
    for cam, s in zip(cams, samples, strict=True):
        path = s[keys.PATH]
        image = read_radiograph(path, frame=pre.get("frame"), voi=pre.get("voi", "header"))
        full = cam_to_original(
            cam, image.shape, geometry(image.shape, pre["image_size"], pre.get("resize", "pad"))
        )
        name = hashlib.sha256(path.encode()).hexdigest()[:10]
        overlay_figure(image, full, out_dir / "cams" / f"{name}.png", title=Path(path).name)
        if cfg.secondary_capture and read_header(path).get("format") == "dicom":
            write_secondary_capture(
                blend_overlay(image, full), path, out_dir / "cams" / f"{name}_sc.dcm"
            )


def cli() -> int:
    """Run from the command line; returns the exit status documented in the module docstring."""
    results: list[dict[str, Any]] = []

    def task(cfg: DictConfig) -> None:
        results.append(predict(cfg))

    try:
        hydra.main(version_base="1.3", config_path="../conf", config_name="predict")(task)()
    except SystemExit as exit_:  # Hydra exits 1 after logging a failed task
        return int(exit_.code or 0) and EXIT_FAILED
    if not results or all(r["predicted"] == 0 for r in results):
        return EXIT_FAILED
    return EXIT_PARTIAL if any(r["unreadable"] for r in results) else EXIT_OK


if __name__ == "__main__":
    sys.exit(cli())
