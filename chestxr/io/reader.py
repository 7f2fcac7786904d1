"""The one radiograph reader of chestxr: DICOM, PNG or JPEG in, display-ready grey array out."""

from __future__ import annotations

import logging
from collections.abc import Callable
from os import PathLike
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from chestxr.io.binning import BIN_SIDES, bin_factor, bin_mean
from chestxr.io.dicom import dicom_header, minmax, read_dicom
from chestxr.io.errors import RadiographReadError
from chestxr.io.raster import raster_header, read_raster

logger = logging.getLogger(__name__)

#: Refuse images with more pixels (Rows x Columns x frames) than this, before decoding.
DEFAULT_MAX_PIXELS = 100_000_000
VOI_MODES = ("header", "minmax")

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_T = TypeVar("_T")


def sniff_format(path: str | PathLike[str]) -> str:
    """Guess the format from the first bytes, not the extension.

    Args:
        path: an existing file.

    Returns:
        ``"dicom"`` (DICM after the 128-byte preamble), ``"png"``, ``"jpeg"`` or ``"unknown"``
        (possibly a DICOM file without preamble, e.g. ACR-NEMA).

    Raises:
        RadiographReadError: the file is empty.
    """
    with open(path, "rb") as f:
        head = f.read(132)
    if not head:
        raise RadiographReadError(path, "the file is empty (0 bytes)")
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head.startswith(_JPEG_MAGIC):
        return "jpeg"
    return "unknown"


def read_radiograph(
    path: str | PathLike[str],
    *,
    frame: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    voi: str = "header",
    bin_to: int | None = None,
    bin_side: str = "longest",
) -> np.ndarray:
    """Read a chest radiograph (DICOM, PNG or JPEG) as a display-ready grey image.

    DICOM goes through the Modality LUT, VOI (``voi="header"``: VOI LUT Sequence, else the first
    window, else min-max) and MONOCHROME1 / INVERSE inversion; PNG and JPEG are folded to grey and
    scaled by their type's maximum. See ``chestxr/io/dicom.py`` for the exact rules.

    Args:
        path: the file; the format is detected from its content.
        frame: frame index for multi-frame files (required there).
        max_pixels: decompression-bomb guard, checked before decoding.
        voi: ``"header"`` or ``"minmax"`` (min-max of the modality values for DICOM, of the
            grey values for PNG/JPEG).
        bin_to: when given, average k x k pixel blocks before the VOI, with the largest k that
            keeps the ``bin_side`` side at ``bin_to`` pixels or more (for a network input of
            that size; see :mod:`chestxr.io.binning`). None keeps every pixel.
        bin_side: ``longest`` or ``shortest``.

    Returns:
        float32 array (H, W) in [0, 1] (``ceil(H / k), ceil(W / k)`` when binned); brighter =
        more attenuation, as a radiologist views it.

    Raises:
        RadiographReadError: any failure to read the file, with the path and an actionable reason.
        ValueError: ``voi``, ``frame``, ``max_pixels`` or ``bin_side`` is not a valid argument
            (a caller bug, not a bad file).
    """
    if voi not in VOI_MODES:
        raise ValueError(f"voi must be one of {VOI_MODES}, got {voi!r}")
    if frame is not None and (isinstance(frame, bool) or not isinstance(frame, int | np.integer)):
        raise ValueError(f"frame must be an int or None, got {frame!r}")
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels!r}")
    if bin_side not in BIN_SIDES:
        raise ValueError(f"bin_side must be one of {BIN_SIDES}, got {bin_side!r}")
    frame = None if frame is None else int(frame)

    def read() -> np.ndarray:
        fmt = sniff_format(path)
        if fmt in ("png", "jpeg"):
            arr = read_raster(path, frame=frame, max_pixels=max_pixels)
            k = bin_factor(arr.shape, bin_to, bin_side)
            arr = minmax(arr, k) if voi == "minmax" else bin_mean(arr, k)
        else:
            arr = read_dicom(
                path,
                frame=frame,
                max_pixels=max_pixels,
                voi=voi,
                bin_to=bin_to,
                bin_side=bin_side,
            )
        if arr.ndim != 2 or arr.dtype != np.float32:
            raise RadiographReadError(path, f"decoded to {arr.dtype} {arr.shape}, expected 2-D")
        return arr

    return _at_boundary(path, read)


def read_header(path: str | PathLike[str]) -> dict[str, Any]:
    """Cheap metadata of a radiograph: no pixel decoding (DICOM is read up to Pixel Data).

    Args:
        path: a DICOM, PNG or JPEG file.

    Returns:
        ``format`` ("dicom" | "png" | "jpeg"), ``rows``, ``columns``, ``frames``, ``modality``,
        ``photometric``, ``transfer_syntax`` (UID string), ``bits_stored``, ``view_position``,
        ``pixel_spacing`` ((row, column) mm), ``manufacturer``, ``mode`` (Pillow mode for
        PNG/JPEG), ``study_uid``, ``series_uid``, ``sop_uid``; None where absent. Patient name,
        ID and birth date are never returned.

    Raises:
        RadiographReadError: the file is missing or is not a readable image.
    """

    def read() -> dict[str, Any]:
        fmt = sniff_format(path)
        return raster_header(path) if fmt in ("png", "jpeg") else dicom_header(path)

    return _at_boundary(path, read)


def _at_boundary(path: str | PathLike[str], read: Callable[[], _T]) -> _T:
    """Run ``read``; every failure leaves as a RadiographReadError naming ``path``."""
    try:
        if not Path(path).exists():
            raise RadiographReadError(path, "file not found")
        if Path(path).is_dir():
            raise RadiographReadError(path, "is a directory, not an image file")
        return read()
    except RadiographReadError:
        raise
    except MemoryError as err:
        reason = "out of memory while decoding; lower max_pixels or free memory"
        raise RadiographReadError(path, reason) from err
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as err:  # decoders raise anything (Rust ones even BaseException panics)
        logger.debug("reading %s failed", path, exc_info=True)
        reason = f"could not read the image: {type(err).__name__}: {err}"
        raise RadiographReadError(path, reason) from err
