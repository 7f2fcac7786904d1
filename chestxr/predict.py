"""``python -m chestxr.predict ckpt_path=PATH input=FILE_FOLDER_OR_MANIFEST``: unlabelled scans.

Writes ``predictions.csv`` (anonymous scan and study ids, probability and decision per output at
the model's stored operating point) and ``unreadable.csv`` (scan id, reason) into the run folder,
and, when asked, a Grad-CAM overlay per scan (PNG, and a DICOM Secondary Capture for DICOM
sources). No path or file name is written unless ``include_paths=true``.

Exit status: 0 when every file was predicted; 2 when some were unreadable (the others are
predicted); 1 when nothing could be predicted or the arguments are wrong.
"""

from __future__ import annotations

import sys
from typing import Any

from omegaconf import DictConfig

from chestxr.utils.exits import exit_status, run_hydra


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Predict every input file; returns counts and the output folder."""
    from chestxr.data.inputs import find_inputs
    from chestxr.inference import load_model, predict_files
    from chestxr.utils.files import ensure_fresh_run_dir

    out_dir = ensure_fresh_run_dir(cfg.paths.output_dir)
    model = load_model(cfg.ckpt_path)
    files, unreadable = find_inputs(cfg.input, list(cfg.extensions))
    return predict_files(
        model,
        files,
        out_dir,
        unreadable=unreadable,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        cams=cfg.cams,
        cam_method=cfg.cam_method,
        target_layer=cfg.target_layer,
        secondary_capture=cfg.secondary_capture,
        include_paths=cfg.include_paths,
        id_key=cfg.id_key,
        precision=cfg.precision,
    )


def cli() -> int:
    """Run from the command line; returns the exit status documented in the module docstring."""
    results, failed = run_hydra("predict", predict)
    return (
        failed
        if failed is not None
        else exit_status(results, done="predicted", failed="unreadable")
    )


if __name__ == "__main__":
    sys.exit(cli())
