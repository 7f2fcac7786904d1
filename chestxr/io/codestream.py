"""The size a compressed DICOM frame says it has, read from its codestream before decoding.

A decoder allocates for the codestream's own dimensions, not for the header's Rows/Columns, so
the decompression-bomb guard must read them: JPEG (baseline, extended, lossless: the SOF
marker), JPEG-LS (SOF55), JPEG 2000 and HTJ2K (the SIZ marker, in a raw codestream or inside a
JP2 file). RLE has no dimensions of its own: its decoder sizes the frame from Rows/Columns.
"""

from __future__ import annotations

import struct

from pydicom.uid import (
    UID,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
)

#: JPEG start-of-frame markers (ITU T.81 B.1.1.3) and JPEG-LS SOF55 (T.87), which carry P, Y, X.
_SOF_MARKERS = frozenset({*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC)})
_SOF_MARKERS = _SOF_MARKERS | {0xCD, 0xCE, 0xCF, 0xF7}
_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
#: How far into a frame the SIZ marker is looked for (a JP2 header is a few hundred bytes).
_J2K_SEARCH = 1 << 16


class CodestreamError(ValueError):
    """The codestream's header could not be read (truncated or not of its transfer syntax)."""


def codestream_size(frame: bytes, tsyntax: UID) -> tuple[int, int] | None:
    """(rows, columns) that a compressed frame's codestream declares.

    Args:
        frame: the frame's bytes (its fragments joined, or at least the first one).
        tsyntax: the transfer syntax it is encoded in.

    Returns:
        (rows, columns), or None for a syntax that holds no dimensions of its own (RLE, deflate)
        or is not one of those listed in the module docstring.

    Raises:
        CodestreamError: the codestream's header is missing, truncated or malformed.
    """
    if tsyntax in JPEG2000TransferSyntaxes:  # HTJ2K included
        return _j2k_size(frame)
    if tsyntax in JPEGTransferSyntaxes or tsyntax in JPEGLSTransferSyntaxes:
        return _jpeg_size(frame)
    return None


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """(Y, X) of the first SOF marker of a JPEG or JPEG-LS stream."""
    if data[:2] != b"\xff\xd8":
        raise CodestreamError("no JPEG start-of-image marker (FFD8) at the start of the frame")
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise CodestreamError(f"expected a JPEG marker at byte {pos}, found {data[pos]:#04x}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _SOF_MARKERS:
            if length < 8 or pos + 9 > len(data):
                raise CodestreamError("truncated JPEG start-of-frame segment")
            rows, columns = struct.unpack(">HH", data[pos + 5 : pos + 9])
            if rows == 0:
                raise CodestreamError(
                    "JPEG frame defers its height to a DNL marker (Y = 0): not supported"
                )
            return rows, columns
        if marker == 0xDA:  # start of scan before any frame header
            break
        pos += 2 + length
    raise CodestreamError("no JPEG start-of-frame marker before the image data")


def _j2k_size(data: bytes) -> tuple[int, int]:
    """(Ysiz - YOsiz, Xsiz - XOsiz) of the SIZ marker of a JPEG 2000 codestream or JP2 file."""
    at = data.find(_J2K_SOC_SIZ, 0, _J2K_SEARCH)
    if at < 0:
        raise CodestreamError("no JPEG 2000 SOC/SIZ marker near the start of the frame")
    siz = data[at + 6 : at + 6 + 18]  # after SOC, SIZ marker, Lsiz: Rsiz, Xsiz, Ysiz, XOsiz, YOsiz
    if len(siz) < 18:
        raise CodestreamError("truncated JPEG 2000 SIZ marker")
    _, xsiz, ysiz, xosiz, yosiz = struct.unpack(">HIIII", siz)
    if xsiz <= xosiz or ysiz <= yosiz:
        raise CodestreamError(f"invalid JPEG 2000 SIZ: image {xsiz}x{ysiz}, offset {xosiz}x{yosiz}")
    return ysiz - yosiz, xsiz - xosiz
