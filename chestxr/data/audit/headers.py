"""Headers: what the files are (formats, modes, DICOM modality, photometric, transfer syntax...)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from pydicom.uid import UID


def _counts(values: Iterable[Any]) -> dict[str, int]:
    counts = Counter("(none)" if v is None else str(v) for v in values)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _syntax_name(uid: str | None) -> str | None:
    if uid is None:
        return None
    name = UID(uid).name
    return name if name == uid else f"{name} ({uid})"


def header_summary(headers: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Counts over file headers: (all files, DICOM files only).

    Args:
        headers: :func:`chestxr.io.read_header` results of the readable files.

    Returns:
        ``files``: counts of format, mode (PNG/JPEG) and bits stored; ``dicom``: ``files`` and
        counts of modality, photometric, transfer syntax, view position, manufacturer, bits
        stored, and ``pixel_spacing_mm`` (row/column min and max, files without spacing).
    """
    raster = [h for h in headers if h["format"] != "dicom"]
    dicom = [h for h in headers if h["format"] == "dicom"]
    files = {
        "format": _counts(h["format"] for h in headers),
        "mode": _counts(h["mode"] for h in raster),
        "bits_stored": _counts(h["bits_stored"] for h in headers),
    }
    spacing = np.array([h["pixel_spacing"] for h in dicom if h["pixel_spacing"]], dtype=float)
    spacing_range = (
        {"row": None, "column": None}
        if not len(spacing)
        else {
            "row": [float(spacing[:, 0].min()), float(spacing[:, 0].max())],
            "column": [float(spacing[:, 1].min()), float(spacing[:, 1].max())],
        }
    )
    summary: dict[str, Any] = {
        "files": len(dicom),
        "modality": _counts(h["modality"] for h in dicom),
        "photometric": _counts(h["photometric"] for h in dicom),
        "transfer_syntax": _counts(_syntax_name(h["transfer_syntax"]) for h in dicom),
        "view_position": _counts(h["view_position"] for h in dicom),
        "manufacturer": _counts(h["manufacturer"] for h in dicom),
        "bits_stored": _counts(h["bits_stored"] for h in dicom),
        "pixel_spacing_mm": {**spacing_range, "missing": len(dicom) - len(spacing)},
    }
    return files, summary
