"""Grad-CAM overlays of unlabelled scans, as PNG figures and DICOM Secondary Captures."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from chestxr.data.transforms import geometry
from chestxr.explain.overlay import blend_overlay, cam_to_original, overlay_figure
from chestxr.explain.secondary_capture import write_secondary_capture
from chestxr.io import RadiographReadError, read_header, read_radiograph
from chestxr.utils.ids import redact

if TYPE_CHECKING:
    from chestxr.explain.cam import TopFindingCams

log = logging.getLogger(__name__)


def write_scan_overlays(
    model: torch.nn.Module,
    cams: TopFindingCams,
    paths: list[str],
    names: list[str],
    out_dir: Path,
    *,
    secondary_capture: bool,
) -> list[str]:
    """A CAM overlay PNG per scan (``out_dir/NAME.png``, titled NAME and the finding explained,
    the scan's most probable), and optionally a Secondary Capture of each DICOM source
    (``out_dir/NAME_sc.dcm``).

    Args:
        model: the classifier (its ``hparams.preprocess`` made the images the maps are of).
        cams: the maps of ``paths``' network inputs
            (:func:`~chestxr.explain.cam.top_finding_cams`).
        paths: the source files.
        names: what to call each overlay (an anonymous id: never the file name).
        out_dir: folder for the files (created).
        secondary_capture: also write Secondary Captures.

    Returns:
        Per scan, what became of its Secondary Capture: its file name, or ``not written: REASON``
        (not a DICOM source, or a source the writer cannot reference); "" when not asked for.
    """
    pre = dict(model.hparams.preprocess)
    out_dir.mkdir(parents=True, exist_ok=True)
    outcomes = []
    for cam, index, path, name in zip(cams.maps, cams.explained, paths, names, strict=True):
        image = read_radiograph(path, frame=pre.get("frame"), voi=pre.get("voi", "header"))
        full = cam_to_original(
            cam, image.shape, geometry(image.shape, pre["image_size"], pre.get("resize", "pad"))
        )
        title = f"{name}: Grad-CAM of {model.output_names[int(index)]}"
        overlay_figure(image, full, out_dir / f"{name}.png", title=title)
        outcomes.append(
            _secondary_capture(image, full, path, name, out_dir / f"{name}_sc.dcm")
            if secondary_capture
            else ""
        )
    return outcomes


def _secondary_capture(image: np.ndarray, cam: np.ndarray, path: str, name: str, out: Path) -> str:
    """Write one Secondary Capture; returns its name or why it was not written (the log names the
    scan ``name`` only: the path is redacted from the reason)."""
    try:
        if read_header(path).get("format") != "dicom":
            return "not written: the source is not a DICOM file"
        write_secondary_capture(blend_overlay(image, cam), path, out)
    except OSError:  # a full disk or an unwritable folder stops the run
        raise
    except Exception as err:  # the source cannot be referenced: listed, the run goes on
        reason = (
            err.reason if isinstance(err, RadiographReadError) else f"{type(err).__name__}: {err}"
        )
        log.warning("Secondary Capture %s not written: %s", out.name, redact(reason, path, name))
        return f"not written: {reason}"
    return out.name
