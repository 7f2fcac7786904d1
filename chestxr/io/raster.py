"""PNG and JPEG radiographs through Pillow, folded to one grey channel in [0, 1].

Grey modes are scaled by their type's maximum (255 for 8-bit, 65535 for 16-bit ``I;16``/``I``);
colour modes (RGB, RGBA, P, CMYK, YCbCr, ...) are converted to RGB by Pillow, alpha dropped, and
folded with the ITU-R BT.601 luma weights (the weights of Pillow's ``convert("L")``, kept in
float instead of rounded to 8 bits). Raster files carry no photometric tag: brighter pixels are
taken to be more attenuating, as in exported chest X-rays.
"""

from __future__ import annotations

import logging
from os import PathLike
from typing import Any

import numpy as np
from PIL import Image

from chestxr.io.dicom import LUMA_WEIGHTS
from chestxr.io.errors import RadiographReadError

logger = logging.getLogger(__name__)

_GREY_MAX = {"1": 1.0, "L": 255.0, "LA": 255.0, "La": 255.0, "I": 65535.0}
_BITS = {"1": 1, "I": 16, "F": 32}


def raster_header(path: str | PathLike[str]) -> dict[str, Any]:
    """Cheap metadata of a PNG/JPEG file (Pillow reads the header only).

    Args:
        path: the file.

    Returns:
        The keys documented in :func:`chestxr.io.read_header`; DICOM-only keys are None.
    """
    with Image.open(path) as img:
        width, height = img.size
        fmt = (img.format or "").lower()
        return {
            "format": "jpeg" if fmt in ("jpeg", "mpo") else fmt,
            "rows": int(height),
            "columns": int(width),
            "frames": int(getattr(img, "n_frames", 1)),
            "modality": None,
            "photometric": None,
            "transfer_syntax": None,
            "bits_stored": 16 if img.mode.startswith("I;16") else _BITS.get(img.mode, 8),
            "view_position": None,
            "pixel_spacing": None,
            "manufacturer": None,
            "mode": img.mode,
            "study_uid": None,
            "series_uid": None,
            "sop_uid": None,
        }


def read_raster(path: str | PathLike[str], *, frame: int | None, max_pixels: int) -> np.ndarray:
    """Decode a PNG or JPEG file to a grey float32 image in [0, 1].

    Args:
        path: the file.
        frame: frame of an animated PNG (required there); ``None`` or 0 otherwise.
        max_pixels: refuse images with more pixels, checked before the pixels are decoded.

    Returns:
        float32 array (H, W).

    Raises:
        RadiographReadError: too large, bad frame, unsupported mode; Pillow's
            ``DecompressionBombError``. Other Pillow errors are wrapped by the caller.
    """
    try:
        img = Image.open(path)
    except Image.DecompressionBombError as err:
        raise RadiographReadError(
            path, f"image too large for Pillow's decompression-bomb guard: {err}"
        ) from err
    with img:
        width, height = img.size
        if width * height > max_pixels:
            raise RadiographReadError(
                path,
                f"image too large: {height} x {width} = {width * height} pixels > "
                f"max_pixels={max_pixels} (decompression-bomb guard; raise max_pixels if the "
                "file is trusted)",
            )
        frames = int(getattr(img, "n_frames", 1))
        if frame is None and frames > 1:
            raise RadiographReadError(
                path, f"animated image ({frames} frames): pass frame=<0..{frames - 1}>"
            )
        if frame is not None:
            if not 0 <= frame < frames:
                raise RadiographReadError(
                    path, f"frame={frame} is out of range: the image has {frames} frame(s)"
                )
            img.seek(frame)
        img.load()
        return _to_grey(path, img)


def _to_grey(path: str | PathLike[str], img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode.startswith("I;16"):
        grey = np.asarray(img).astype(np.float32) * np.float32(1.0 / 65535.0)
    elif mode in _GREY_MAX:
        arr = np.asarray(img)
        if arr.ndim == 3:  # LA: drop alpha
            arr = arr[..., 0]
        grey = arr.astype(np.float32) * np.float32(1.0 / _GREY_MAX[mode])
    elif mode == "F":
        raise RadiographReadError(path, "floating-point images (Pillow mode 'F') are not supported")
    else:  # RGB, RGBA, RGBX, P, PA, CMYK, YCbCr, LAB, HSV, ...
        if mode not in ("RGB", "RGBA", "RGBX"):
            img = img.convert("RGB")
        rgb = np.asarray(img)[..., :3].astype(np.float32)
        grey = rgb @ np.asarray(LUMA_WEIGHTS, dtype=np.float32)
        grey *= np.float32(1.0 / 255.0)
    if grey.ndim != 2:
        raise RadiographReadError(path, f"Pillow mode {mode!r} gave shape {grey.shape}")
    return np.clip(grey, 0.0, 1.0, out=grey)
