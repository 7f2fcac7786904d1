"""DICOM radiographs to display-ready grey images: pydicom decode, Modality LUT, VOI, inversion.

The pipeline follows the DICOM grayscale standard display chain (PS3.3 C.11):

1. decode the stored values with pydicom's decoders (one frame when ``frame`` is given);
2. Modality LUT: the Modality LUT Sequence (:func:`pydicom.pixels.apply_modality_lut`) or
   Rescale Slope/Intercept (a positive slope is folded into the linear window's bounds instead of
   rescaling every pixel: the same values, one pass fewer);
3. VOI: the first VOI LUT Sequence item when present (scaled to [0, 1] by the range of that
   LUT's entries), else the first Window Center/Width pair (the header's default view when it
   lists several) with the VOI LUT Function (LINEAR, LINEAR_EXACT or SIGMOID) mapped straight to
   [0, 1], else min-max. A window that leaves every pixel on one side of it (a header that does
   not fit its pixel data) falls back to min-max, logged; so do empty or malformed LUTs and
   windows. ``voi="minmax"`` always uses min-max of the modality values;
4. inversion after VOI for MONOCHROME1, or for MONOCHROME2 with Presentation LUT Shape INVERSE,
   so that brighter always means more attenuation.

Colour images (RGB, YBR_* converted to RGB by pydicom, PALETTE COLOR through its palette) are
folded to grey with ITU-R BT.601 luma weights and scaled by the largest value the stored bits
allow; Modality and VOI LUTs do not apply to them.
"""

from __future__ import annotations

import logging
import math
import struct
from os import PathLike
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels import apply_color_lut, apply_modality_lut, convert_color_space, get_decoder
from pydicom.pixels.utils import as_pixel_options
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from chestxr.io.binning import bin_affine, bin_factor, bin_mean
from chestxr.io.codestream import CodestreamError, codestream_size
from chestxr.io.errors import RadiographReadError

logger = logging.getLogger(__name__)

#: ITU-R BT.601 luma weights (R, G, B), as Pillow's ``convert("L")`` uses.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
#: What to install when a compressed transfer syntax has no decoder.
DICOM_EXTRA_HINT = "pip install 'chestxr[dicom]'"

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_YBR = ("YBR_FULL", "YBR_FULL_422")
_VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
_MIN_WIDTH = {"LINEAR": ">= 1", "LINEAR_EXACT": "> 0", "SIGMOID": "> 0"}

# Header keys that are safe to report: no patient name, ID or birth date.
_HEADER_TEXT_KEYS = {
    "modality": "Modality",
    "photometric": "PhotometricInterpretation",
    "view_position": "ViewPosition",
    "manufacturer": "Manufacturer",
    "study_uid": "StudyInstanceUID",
    "series_uid": "SeriesInstanceUID",
    "sop_uid": "SOPInstanceUID",
}


def read_dicom_dataset(path: str | PathLike[str], *, stop_before_pixels: bool = False) -> Dataset:
    """Read a DICOM file, with or without a preamble and file meta header.

    ``force=True`` lets pydicom read old ACR-NEMA style files that have neither; their transfer
    syntax is then set from the encoding pydicom detected (implicit VR little endian for
    ACR-NEMA).

    Args:
        path: the file.
        stop_before_pixels: skip the Pixel Data element (header only).

    Returns:
        The dataset, with ``file_meta.TransferSyntaxUID`` always set.

    Raises:
        RadiographReadError: the file holds no image (no Rows/Columns).
    """
    ds = pydicom.dcmread(path, force=True, stop_before_pixels=stop_before_pixels)
    has_pixels = stop_before_pixels or "PixelData" in ds
    if "Rows" not in ds or "Columns" not in ds or not has_pixels:
        if ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID"):
            sop_class = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID")
            reason = f"DICOM file without an image (no Rows/Columns/Pixel Data): {sop_class.name}"
        else:
            reason = (
                "not a DICOM, PNG or JPEG image: no DICOM/PNG/JPEG signature, and read as a "
                "DICOM data set it has no image (Rows, Columns, Pixel Data)"
            )
        raise RadiographReadError(path, reason)
    if not ds.file_meta.get("TransferSyntaxUID"):
        is_implicit, is_little = ds.original_encoding
        if is_implicit is False:
            tsyntax = ExplicitVRLittleEndian if is_little is not False else ExplicitVRBigEndian
        else:
            tsyntax = ImplicitVRLittleEndian
        logger.debug("%s: no file meta transfer syntax, assuming %s", path, tsyntax.name)
        ds.file_meta.TransferSyntaxUID = tsyntax
    return ds


def dicom_header(path: str | PathLike[str]) -> dict[str, Any]:
    """Cheap metadata of a DICOM radiograph (the pixel data is not read).

    Args:
        path: the file.

    Returns:
        The keys documented in :func:`chestxr.io.read_header`; ``pixel_spacing`` is Pixel Spacing,
        or Imager Pixel Spacing when only that is present (DX), as (row, column) in mm.

    Raises:
        RadiographReadError: the file holds no image.
    """
    ds = read_dicom_dataset(path, stop_before_pixels=True)
    header: dict[str, Any] = {
        "format": "dicom",
        "rows": _header_int(path, ds, "Rows"),
        "columns": _header_int(path, ds, "Columns"),
        "frames": _header_int(path, ds, "NumberOfFrames", default=1) or 1,
        "transfer_syntax": str(ds.file_meta.TransferSyntaxUID),
        "bits_stored": _int_or_none(ds.get("BitsStored")),
        "pixel_spacing": None,
        "mode": None,
    }
    for key, keyword in _HEADER_TEXT_KEYS.items():
        value = ds.get(keyword)
        header[key] = (str(value).strip() or None) if value is not None else None
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    if spacing is not None and not isinstance(spacing, str | bytes) and len(spacing) == 2:
        row, column = _first_value(spacing[0]), _first_value(spacing[1])
        if row is not None and column is not None:
            header["pixel_spacing"] = (row, column)
    return header


def read_dicom(
    path: str | PathLike[str],
    *,
    frame: int | None,
    max_pixels: int,
    voi: str,
    bin_to: int | None = None,
    bin_side: str = "longest",
) -> np.ndarray:
    """Decode one DICOM radiograph to a display-ready grey image (see the module docstring).

    Args:
        path: the file.
        frame: the frame of a multi-frame image (required there); ``None`` or 0 otherwise.
        max_pixels: refuse images with more than Rows * Columns * frames pixels, and compressed
            frames whose codestream declares more pixels or another size than Rows x Columns
            (:mod:`chestxr.io.codestream`), before decoding.
        voi: ``"header"`` (VOI LUT / window from the header, else min-max) or ``"minmax"``.
        bin_to: average k x k blocks of modality values before the VOI, with the largest k that
            keeps the ``bin_side`` side at ``bin_to`` pixels or more (:mod:`chestxr.io.binning`);
            None keeps every pixel.
        bin_side: ``longest`` or ``shortest``.

    Returns:
        float32 array (H, W) in [0, 1] (``ceil(H / k), ceil(W / k)`` when binned), brighter = more
        attenuation.

    Raises:
        RadiographReadError: anything this module knows how to explain; other exceptions from
            pydicom are wrapped by :func:`chestxr.io.read_radiograph`.
    """
    ds = read_dicom_dataset(path)
    arr, photometric = _decode(path, ds, frame=frame, max_pixels=max_pixels)
    if photometric in _MONOCHROME:
        if arr.ndim != 2:
            raise RadiographReadError(
                path, f"{photometric} image decoded to shape {arr.shape}, expected (rows, columns)"
            )
        grey, rescale = _modality_lut(path, arr, ds)
        k = bin_factor(grey.shape, bin_to, bin_side)
        # minmax is the same on stored values as on their positive rescale; a window folds it in
        grey = minmax(grey, k) if voi == "minmax" else _voi(path, grey, ds, k, rescale)
        grey = np.ascontiguousarray(grey, dtype=np.float32)
        if photometric == "MONOCHROME1" or _presentation_inverse(ds):
            np.subtract(np.float32(1.0), grey, out=grey)
        return grey
    grey = _colour_to_grey(path, arr, ds, photometric)
    k = bin_factor(grey.shape, bin_to, bin_side)
    return minmax(grey, k) if voi == "minmax" else bin_mean(grey, k)


def minmax(arr: np.ndarray, k: int = 1) -> np.ndarray:
    """Scale to [0, 1] by the image's own range; a constant image gives zeros.

    Args:
        arr: any real array.
        k: then bin k x k blocks (:mod:`chestxr.io.binning`; 2-D ``arr`` only).

    Returns:
        float32 array of the same shape (binned: ``ceil(H / k), ceil(W / k)``).
    """
    arr = np.asarray(arr)
    lo, hi = float(arr.min()), float(arr.max())
    if not hi > lo:  # constant (or NaN): no range to scale by
        return np.zeros(arr[::k, ::k].shape if k > 1 else arr.shape, np.float32)
    if k > 1:
        return bin_affine(arr, k, lo, hi)
    out = np.array(arr, dtype=np.float32)  # a copy, worked on in place
    out -= np.float32(lo)
    out *= np.float32(1.0 / (hi - lo))
    return np.clip(out, 0.0, 1.0, out=out)


def _decode(
    path: str | PathLike[str], ds: Dataset, *, frame: int | None, max_pixels: int
) -> tuple[np.ndarray, str]:
    """Check size, frames and decoder, then decode; returns (array, photometric after decode)."""
    rows, columns = _header_int(path, ds, "Rows"), _header_int(path, ds, "Columns")
    frames = _header_int(path, ds, "NumberOfFrames", default=1) or 1
    if rows <= 0 or columns <= 0:
        raise RadiographReadError(path, f"empty image: Rows={rows}, Columns={columns}")
    if rows * columns * frames > max_pixels:
        raise RadiographReadError(
            path,
            f"image too large: {rows} x {columns} x {frames} frame(s) = "
            f"{rows * columns * frames} pixels > max_pixels={max_pixels} "
            "(decompression-bomb guard; raise max_pixels if the file is trusted)",
        )
    if frame is None and frames > 1:
        raise RadiographReadError(
            path, f"multi-frame image ({frames} frames): pass frame=<0..{frames - 1}> to pick one"
        )
    if frame is not None and not 0 <= frame < frames:
        raise RadiographReadError(
            path, f"frame={frame} is out of range: the image has {frames} frame(s)"
        )

    tsyntax: UID = ds.file_meta.TransferSyntaxUID
    if tsyntax.is_encapsulated:
        _check_codestream(path, ds, tsyntax, frame or 0, frames, (rows, columns), max_pixels)
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError as err:
        raise RadiographReadError(
            path, f"transfer syntax {tsyntax.name} ({tsyntax}) is not supported by pydicom"
        ) from err
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no plugin"
        raise RadiographReadError(
            path,
            f"no decoder installed for transfer syntax {tsyntax.name} ({tsyntax}): "
            f"{DICOM_EXTRA_HINT} (pylibjpeg plugins) [{missing}]",
        )

    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if not photometric and int(ds.get("SamplesPerPixel", 1) or 1) == 1:
        logger.warning("%s: no Photometric Interpretation, assuming MONOCHROME2", path)
        ds.PhotometricInterpretation = photometric = "MONOCHROME2"
    options = as_pixel_options(ds)
    # Native grey pixels: a read-only view of the file's bytes (pydicom copies them, then copies
    # again to clear unused high bits); the bits are cleared below only where one is set.
    in_place = not tsyntax.is_encapsulated and photometric in _MONOCHROME and "PixelData" in ds
    if in_place:
        options.update(view_only=True, correct_unused_bits=False)
    try:
        arr, changes = decoder.as_array(
            ds, index=frame if frames > 1 else None, validate=True, **options
        )
    except Exception as err:
        raise RadiographReadError(
            path,
            f"pixel data could not be decoded ({tsyntax.name}): {type(err).__name__}: {err}",
        ) from err
    except BaseException as err:  # Rust decoders panic with pyo3's BaseException subclass
        if isinstance(err, KeyboardInterrupt | SystemExit | GeneratorExit):
            raise
        raise RadiographReadError(
            path, f"pixel data could not be decoded ({tsyntax.name}): decoder crashed: {err}"
        ) from err
    photometric = str(changes.get("photometric_interpretation", photometric)).strip().upper()
    if in_place:
        arr = _unused_bits_cleared(arr, int(options.get("bits_stored") or 0))
    return arr, photometric


def _unused_bits_cleared(arr: np.ndarray, bits_stored: int) -> np.ndarray:
    """Stored integers with the bits above Bits Stored ignored, as pydicom's
    ``correct_unused_bits`` leaves them (PS3.5 8.1.1: those bits may hold anything, e.g. an old
    overlay), sign-extended where signed; ``arr`` itself when none of them changes a value."""
    bits = arr.dtype.itemsize * 8
    if arr.dtype.kind not in "ui" or not 0 < bits_stored < bits or arr.size == 0:
        return arr
    if arr.dtype.kind == "u":  # one pass: the largest value tells
        if arr.max() < (1 << bits_stored):
            return arr
    elif -(1 << (bits_stored - 1)) <= arr.min() and arr.max() < (1 << (bits_stored - 1)):
        return arr
    out = np.array(arr)  # shifting left then right (arithmetic if signed) drops the high bits
    np.left_shift(out, bits - bits_stored, out=out)
    np.right_shift(out, bits - bits_stored, out=out)
    return out


def _header_int(path: str | PathLike[str], ds: Dataset, keyword: str, default: int = 0) -> int:
    """An integer header value (Rows, Columns, Number of Frames), checked to be one.

    Raises:
        RadiographReadError: the value is not a whole number (e.g. Number of Frames '1A').
    """
    if keyword not in ds or ds[keyword].value in (None, ""):
        if default:
            return default
        raise RadiographReadError(path, f"the header has no {keyword}")
    value = ds[keyword].value
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and number == int(number)):
        raise RadiographReadError(path, f"{keyword} is not a whole number: {value!r}")
    return int(number)


def _check_codestream(
    path: str | PathLike[str],
    ds: Dataset,
    tsyntax: UID,
    index: int,
    frames: int,
    header_size: tuple[int, int],
    max_pixels: int,
) -> None:
    """Refuse a compressed frame whose codestream is larger than allowed or than the header says.

    Decoders allocate for the codestream's own size (:mod:`chestxr.io.codestream`), so this runs
    before any decoding.

    Raises:
        RadiographReadError: the frame cannot be found, its codestream header cannot be read, or
            its size exceeds ``max_pixels`` or differs from Rows x Columns.
    """
    try:
        data = get_frame(ds.PixelData, index, number_of_frames=frames)
        size = codestream_size(data, tsyntax)
    except (CodestreamError, ValueError, struct.error) as err:
        raise RadiographReadError(
            path, f"compressed pixel data ({tsyntax.name}) unreadable before decoding: {err}"
        ) from err
    if size is None:
        return
    (rows, columns), (h_rows, h_columns) = size, header_size
    if rows * columns > max_pixels or size != header_size:
        raise RadiographReadError(
            path,
            f"the {tsyntax.name} codestream of frame {index} is {rows} x {columns} pixels, the "
            f"header says {h_rows} x {h_columns} (max_pixels={max_pixels}); refused before "
            "decoding (decompression-bomb guard)",
        )


def _modality_lut(
    path: str | PathLike[str], arr: np.ndarray, ds: Dataset
) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Stored values to modality values, a positive linear rescale left for the VOI to fold in.

    The Modality LUT Sequence goes through pydicom's ``apply_modality_lut``. Rescale
    Slope/Intercept with a positive slope is not applied: it comes back beside the stored values
    as ``(slope, intercept)`` and :func:`_voi` moves the window into stored units instead (one
    pass over the full-size image fewer; exact, the map being affine and increasing). A negative
    slope is applied here in float32 (pydicom works in float64, twice the memory traffic); the
    identity is skipped. Empty LUTs and half-present rescales are ignored (logged); a non-finite
    or zero slope is an error.

    Returns:
        The values and the rescale still to apply to them (None: they are modality values).
    """
    if "ModalityLUTSequence" in ds and not _lut_item(ds, "ModalityLUTSequence"):
        logger.warning("%s: empty or incomplete Modality LUT Sequence ignored", path)
        del ds.ModalityLUTSequence
    if "ModalityLUTSequence" not in ds:
        slope = _float_or_none(ds, "RescaleSlope")
        intercept = _float_or_none(ds, "RescaleIntercept")
        if slope is None or intercept is None:
            # pydicom rescales only when both are present; drop half-present/empty values
            for keyword in ("RescaleSlope", "RescaleIntercept"):
                if keyword in ds:
                    delattr(ds, keyword)
            if slope is not None or intercept is not None:
                logger.warning("%s: Rescale Slope/Intercept incomplete, ignored", path)
            return arr, None
        if not (math.isfinite(slope) and math.isfinite(intercept)) or slope == 0:
            raise RadiographReadError(
                path, f"invalid Rescale Slope/Intercept: {slope!r}/{intercept!r}"
            )
        if slope == 1 and intercept == 0:
            return arr, None
        if slope > 0:
            return arr, (slope, intercept)
        return _rescaled(arr, (slope, intercept)), None
    return apply_modality_lut(arr, ds), None


def _rescaled(arr: np.ndarray, rescale: tuple[float, float] | None) -> np.ndarray:
    """``arr * slope + intercept`` in float32 (exact for stored values < 2**24); None: ``arr``."""
    if rescale is None:
        return arr
    out = arr.astype(np.float32)
    out *= np.float32(rescale[0])
    out += np.float32(rescale[1])
    return out


def _voi(
    path: str | PathLike[str],
    arr: np.ndarray,
    ds: Dataset,
    k: int = 1,
    rescale: tuple[float, float] | None = None,
) -> np.ndarray:
    """VOI from the header (VOI LUT Sequence, else first window, else min-max) to [0, 1].

    ``k > 1`` bins k x k blocks of the result (fused with linear windows and min-max).
    ``rescale``: ``arr`` holds stored values and the modality values are ``arr * slope +
    intercept`` (slope > 0); a fused linear window is moved into stored units instead (exact:
    the map is affine and increasing), min-max needs nothing, other paths rescale first.
    """
    item = _lut_item(ds, "VOILUTSequence")
    if item is not None:
        return bin_mean(_apply_voi_lut_item(path, _rescaled(arr, rescale), ds, item), k)
    if "VOILUTSequence" in ds:
        logger.warning("%s: empty or incomplete VOI LUT Sequence ignored", path)
    window = _first_window(path, ds)
    if window is not None:
        out = _binned_window(arr, *window, k=k, rescale=rescale)
        if out.min() < out.max() or np.min(arr) == np.max(arr):
            return out
        m, b = rescale or (1.0, 0.0)
        logger.warning(
            "%s: window center/width %s/%s puts every pixel outside the window (values %s..%s); "
            "using min-max instead",
            path,
            window[0],
            window[1],
            np.min(arr) * m + b,
            np.max(arr) * m + b,
        )
    return minmax(arr, k)  # the same on stored values as on their positive rescale


def _binned_window(
    arr: np.ndarray,
    center: float,
    width: float,
    function: str = "LINEAR",
    *,
    k: int = 1,
    rescale: tuple[float, float] | None = None,
) -> np.ndarray:
    """:func:`window_to_unit`, then k x k bins; linear windows are fused (clip, bin, scale).

    ``rescale`` (slope > 0, intercept): ``arr`` holds stored values; a fused window takes its
    bounds in stored units (``(v - intercept) / slope``), the others rescale ``arr`` first.
    """
    if k == 1 or function == "SIGMOID" or (function == "LINEAR" and width == 1):
        return bin_mean(window_to_unit(_rescaled(arr, rescale), center, width, function), k)
    c, w = _linear_window(center, width, function)
    lo, hi = c - w / 2, c + w / 2  # the modality values mapped to 0 and 1
    if rescale is not None:
        slope, intercept = rescale
        lo, hi = (lo - intercept) / slope, (hi - intercept) / slope
    return bin_affine(arr, k, lo, hi)


def window_to_unit(
    arr: np.ndarray, center: float, width: float, function: str = "LINEAR"
) -> np.ndarray:
    """The DICOM VOI window function (PS3.3 C.11.2.1.2 / C.11.2.1.3) with output range [0, 1].

    This is pydicom's ``apply_windowing`` with y_min = 0 and y_max = 1: pydicom's own output
    range depends on BitsStored and the rescale, so it would have to be undone.

    Args:
        arr: modality values.
        center: Window Center.
        width: Window Width (LINEAR: >= 1; LINEAR_EXACT and SIGMOID: > 0).
        function: VOI LUT Function: ``LINEAR``, ``LINEAR_EXACT`` or ``SIGMOID``.

    Returns:
        float32 array in [0, 1].

    Raises:
        ValueError: unknown function or a width it does not allow.
    """
    if function not in _VOI_FUNCTIONS:
        raise ValueError(f"unknown VOI LUT Function {function!r}; expected one of {_VOI_FUNCTIONS}")
    if width < (1 if function == "LINEAR" else 0) or width == 0:
        raise ValueError(f"{function} window width must be {_MIN_WIDTH[function]}, got {width!r}")
    if function == "LINEAR" and width == 1:  # a step at center - 0.5
        return (np.asarray(arr) > center - 0.5).astype(np.float32)
    out = np.array(arr, dtype=np.float32)  # a copy, worked on in place
    if function == "SIGMOID":
        out -= np.float32(center)
        out *= np.float32(-4.0 / width)
        np.clip(out, -80.0, 80.0, out=out)
        np.exp(out, out=out)
        out += np.float32(1.0)
        np.reciprocal(out, out=out)
        return out
    c, w = _linear_window(center, width, function)
    out *= np.float32(1.0 / w)
    out += np.float32(0.5 - c / w)
    return np.clip(out, 0.0, 1.0, out=out)


def _linear_window(center: float, width: float, function: str) -> tuple[float, float]:
    """(c, w) such that a linear VOI maps x to ``clip((x - c) / w + 0.5, 0, 1)``.

    LINEAR: ``((x - (center - 0.5)) / (width - 1) + 0.5)``; LINEAR_EXACT: ``(x - center) / width
    + 0.5`` (PS3.3 C.11.2.1.2, C.11.2.1.3.2).
    """
    return (center - 0.5, width - 1.0) if function == "LINEAR" else (center, width)


def _first_window(path: str | PathLike[str], ds: Dataset) -> tuple[float, float, str] | None:
    """The first (center, width, function) of the header, or None when absent or unusable."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    center, width = _first_value(ds["WindowCenter"].value), _first_value(ds["WindowWidth"].value)
    function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    if center is None or width is None or function not in _VOI_FUNCTIONS:
        logger.warning(
            "%s: unusable window %r/%r (%s) ignored, using min-max",
            path,
            ds["WindowCenter"].value,
            ds["WindowWidth"].value,
            function,
        )
        return None
    min_width = 1.0 if function == "LINEAR" else 0.0
    if not (math.isfinite(center) and math.isfinite(width)) or width < min_width or width == 0:
        logger.warning(
            "%s: invalid window center/width %r/%r ignored, using min-max", path, center, width
        )
        return None
    return center, width, function


def _apply_voi_lut_item(
    path: str | PathLike[str], arr: np.ndarray, ds: Dataset, item: Dataset
) -> np.ndarray:
    """Look modality values up in a VOI LUT and scale by the LUT's output range to [0, 1].

    Written here rather than with ``pydicom.pixels.apply_voi``: pydicom 3.0 indexes the table
    with an array of the LUT's output type, so an 8-bit LUT with more than 256 entries wraps.
    """
    first_map, table = _lut_table(path, item, ds)
    if np.issubdtype(arr.dtype, np.integer):
        index = arr.astype(np.int64) - first_map
    else:  # a rescale made floats: round to the nearest table entry
        index = np.rint(arr).astype(np.int64) - first_map
    np.clip(index, 0, len(table) - 1, out=index)
    lo, hi = float(table.min()), float(table.max())
    if not hi > lo:
        return np.zeros(np.shape(arr), dtype=np.float32)
    scaled = (table.astype(np.float32) - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    return scaled[index]


def _lut_table(path: str | PathLike[str], item: Dataset, ds: Dataset) -> tuple[int, np.ndarray]:
    """(first mapped value, entries) of a LUT item; LUT Data may be US values or OW bytes."""
    descriptor = [int(v) for v in item.LUTDescriptor]
    if len(descriptor) != 3:
        raise RadiographReadError(path, f"LUT Descriptor must have 3 values, got {descriptor}")
    entries, first_map, bits = descriptor
    entries = entries or 2**16
    value = item["LUTData"].value
    if isinstance(value, bytes | bytearray):
        if bits <= 8 and len(value) == entries:  # packed 8-bit entries
            table = np.frombuffer(value, dtype=np.uint8)
        else:
            little = ds.original_encoding[1] is not False
            table = np.frombuffer(value[: 2 * (len(value) // 2)], dtype="<u2" if little else ">u2")
    else:
        table = np.atleast_1d(np.asarray(value, dtype=np.int64))
    if table.size < entries:
        raise RadiographReadError(
            path, f"LUT Data has {table.size} entries, the LUT Descriptor says {entries}"
        )
    return first_map, table[:entries]


def _lut_item(ds: Dataset, keyword: str) -> Dataset | None:
    """The first item of a LUT sequence when it has a 3-value descriptor and data, else None."""
    seq = ds.get(keyword)
    if not seq:
        return None
    item = seq[0]
    descriptor, data = item.get("LUTDescriptor"), item.get("LUTData")
    if descriptor is None or data is None or len(descriptor) != 3:
        return None
    if isinstance(data, bytes | bytearray | list | tuple) and len(data) == 0:
        return None
    return item


def _presentation_inverse(ds: Dataset) -> bool:
    return str(ds.get("PresentationLUTShape", "")).strip().upper() == "INVERSE"


def _colour_to_grey(
    path: str | PathLike[str], arr: np.ndarray, ds: Dataset, photometric: str
) -> np.ndarray:
    """RGB, YBR_FULL(_422) or PALETTE COLOR to luma in [0, 1]."""
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)  # RGB in the palette's own bit depth
        scale = float(np.iinfo(arr.dtype).max) if arr.dtype.kind in "ui" else 1.0
    elif photometric == "RGB" or photometric in _YBR:
        if photometric in _YBR:  # pydicom normally converts already; this is the fallback
            arr = convert_color_space(arr, photometric, "RGB")
        bits = int(ds.get("BitsStored") or 8)
        scale = float(2**bits - 1)
    else:
        raise RadiographReadError(
            path,
            f"unsupported Photometric Interpretation {photometric!r}: chestxr reads "
            "MONOCHROME1/2, RGB, YBR_FULL(_422) and PALETTE COLOR",
        )
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise RadiographReadError(
            path, f"{photometric} image decoded to shape {arr.shape}, expected (rows, columns, 3)"
        )
    luma = arr.astype(np.float32) @ np.asarray(LUMA_WEIGHTS, dtype=np.float32)
    luma *= np.float32(1.0 / scale)
    return np.clip(luma, 0.0, 1.0, out=luma)


def _first_value(value: Any) -> float | None:
    """First number of a DS value that may be multi-valued; None when empty or not a number."""
    if value is None:
        return None
    if not isinstance(value, str | bytes) and hasattr(value, "__len__"):
        if len(value) == 0:
            return None
        value = value[0]
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _float_or_none(ds: Dataset, keyword: str) -> float | None:
    return _first_value(ds.get(keyword)) if keyword in ds else None


def _int_or_none(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None
