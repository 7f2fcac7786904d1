"""A DICOM file's preamble, prefix and File Meta Information group (PS3.10 7.1), encoded directly.

pydicom's ``write_file_meta_info`` on a ``FileMetaDataset`` (and pynetdicom's
``Event.encoded_dataset``, which uses it) validates and looks up each element as it is set and
written: ~0.4 ms per file, paid for every instance the node receives and every SR it writes
(~0.01 ms here). The group is a handful of UL, OB, UI, SH and AE elements, all in the default
character repertoire; :func:`file_header` writes them as pydicom's writer does, byte for byte
(tests hold the two equal), and refuses what it does not know rather than guess.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

GROUP_LENGTH = 0x00020000
VERSION = 0x00020001
SOP_CLASS = 0x00020002
SOP_INSTANCE = 0x00020003
TRANSFER_SYNTAX = 0x00020010
IMPLEMENTATION_CLASS = 0x00020012
IMPLEMENTATION_VERSION = 0x00020013
_TEXT_PAD = {"UI": b"\x00", "AE": b" ", "SH": b" ", "CS": b" ", "LO": b" "}
# pydicom's writer adds a missing version and implementation class and version name, with its own
# version's values: the caller gives them
_NEEDED = (
    VERSION,
    SOP_CLASS,
    SOP_INSTANCE,
    TRANSFER_SYNTAX,
    IMPLEMENTATION_CLASS,
    IMPLEMENTATION_VERSION,
)


def file_header(elements: Iterable[tuple[int, str, object]]) -> bytes:
    """The 128-byte preamble, ``DICM`` and the File Meta Information group of ``elements``
    (``(tag, VR, value)`` of group 0x0002, the last of a tag given twice counting; a group
    length among them is ignored: computed here),
    as pydicom's ``write_file_meta_info(..., enforce_standard=True)`` writes them, in tag order.

    Raises:
        ValueError: an element outside group 0x0002, a VR or value this does not encode (text
            outside ASCII, an empty or multi-valued one), or one of (0002,0001), (0002,0002),
            (0002,0003), (0002,0010), (0002,0012), (0002,0013) missing.
    """
    given = {tag: (vr, value) for tag, vr, value in elements if tag != GROUP_LENGTH}
    missing = [f"({t >> 16:04X},{t & 0xFFFF:04X})" for t in _NEEDED if t not in given]
    if missing:
        raise ValueError(f"file meta information lacks {', '.join(missing)}")
    body = b"".join(_element(tag, *given[tag]) for tag in sorted(given))
    return b"\x00" * 128 + b"DICM" + _element(GROUP_LENGTH, "UL", len(body)) + body


def _element(tag: int, vr: str, value: object) -> bytes:
    """One Explicit VR Little Endian element of group 0x0002: a UL in range, a non-empty OB, or
    one non-empty ASCII text value without leading or trailing spaces or NULs (pydicom strips
    those from a UID) of at most 64 bytes; anything else is refused (ValueError)."""
    if tag >> 16 != 0x0002:
        raise ValueError(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) is not a file meta element")
    if vr == "UL" and isinstance(value, int) and 0 <= value < 2**32:
        return struct.pack("<HH2sHI", 0x0002, tag & 0xFFFF, b"UL", 4, value)
    if vr == "OB" and isinstance(value, bytes) and 0 < len(value) < 2**31:
        data = value + b"\x00" * (len(value) % 2)
        return struct.pack("<HH2s2xI", 0x0002, tag & 0xFFFF, b"OB", len(data)) + data
    if vr in _TEXT_PAD and isinstance(value, str) and _plain(value):
        data = value.encode("ascii")
        data += _TEXT_PAD[vr] * (len(data) % 2)
        return struct.pack("<HH2sH", 0x0002, tag & 0xFFFF, vr.encode(), len(data)) + data
    raise ValueError(f"file meta element ({0x0002:04X},{tag & 0xFFFF:04X}) {vr} {value!r}")


def _plain(text: str) -> bool:
    """One value pydicom writes as it is (but for padding)."""
    return (
        0 < len(text) <= 64 and text.isascii() and "\\" not in text and text == text.strip(" \x00")
    )
