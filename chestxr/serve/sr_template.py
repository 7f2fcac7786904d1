"""A model's SR measurement content, encoded once, with each instance's values spliced in.

highdicom builds the content tree of a model's first SR (:func:`chestxr.serve.results.build_sr`);
what changes from one scored instance to the next is a handful of leaf values in each measurement
group: the tracking UID, the source image's SOP class and instance UIDs, the probability (as DS
and as FD) and the present/absent code. :class:`ContentTemplate` encodes the tree once, with every
sequence and item of undefined length (delimited, so no enclosing length depends on a leaf), and
cuts the bytes around those leaves; an instance's content is then the pieces joined with its own
leaves encoded (Explicit VR Little Endian, as the SR file is written). Encoding the content with
pydicom took ~7 ms per SR, most of the node's time outside the forward pass after highdicom's own
~10 ms; joining takes microseconds. The result is held equal to highdicom's SR, element for
element, by ``tests/test_serve_results.py``, and each template checks itself once when made: the
first instance's spliced content must decode to highdicom's.
"""

from __future__ import annotations

import copy
import struct
from collections.abc import Iterator, Sequence
from typing import Any

from pydicom.charset import convert_encodings
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_sequence
from pydicom.filewriter import write_data_element
from pydicom.sr.codedict import codes
from pydicom.tag import Tag
from pydicom.valuerep import DS

CONTENT_SEQUENCE = 0x0040A730
_TRACKING_UID = ("112040", "DCM")
_PROBABILITY = (codes.DCM.Probability.value, codes.DCM.Probability.scheme_designator)
_IMAGING_MEASUREMENTS = ("126010", "DCM")
# the leaves each measurement group gets per instance: (name, tag, VR)
LEAVES = (
    ("tracking_uid", 0x0040A124, "UI"),
    ("source_class_uid", 0x00081150, "UI"),
    ("source_instance_uid", 0x00081155, "UI"),
    ("probability_ds", 0x0040A30A, "DS"),
    ("probability_fd", 0x0040A161, "FD"),
    ("code_value", 0x00080100, "SH"),
    ("code_scheme", 0x00080102, "SH"),
    ("code_meaning", 0x00080104, "LO"),
)
_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


def _concept(item: Dataset) -> tuple[str, str] | None:
    names = item.get("ConceptNameCodeSequence")
    return (str(names[0].CodeValue), str(names[0].CodingSchemeDesignator)) if names else None


def leaf_holders(content: Dataset, finding_codes: Sequence[tuple[str, str]]) -> list[dict]:
    """Per measurement group of ``content`` (a report's root content item), the data set holding
    each leaf of :data:`LEAVES`.

    Args:
        content: the root content item (its ``ContentSequence`` holds the Imaging Measurements).
        finding_codes: each group's finding as (code value, scheme), in the groups' order.

    Raises:
        ValueError: the content is not laid out as the node's SRs are (a group missing a leaf,
            or not one group per finding).
    """
    measurements = next(
        (i for i in content.ContentSequence if _concept(i) == _IMAGING_MEASUREMENTS), None
    )
    groups = (
        []
        if measurements is None
        else [i for i in measurements.ContentSequence if i.ValueType == "CONTAINER"]
    )
    if len(groups) != len(finding_codes):
        raise ValueError(f"{len(groups)} measurement groups for {len(finding_codes)} outputs")
    out = []
    for k, (group, finding) in enumerate(zip(groups, finding_codes, strict=True)):
        holders: dict[str, Dataset] = {}
        for item in group.ContentSequence:
            concept = _concept(item)
            if item.ValueType == "UIDREF" and concept == _TRACKING_UID:
                holders["tracking_uid"] = item
            elif item.ValueType == "IMAGE":
                ref = item.ReferencedSOPSequence[0]
                holders["source_class_uid"] = holders["source_instance_uid"] = ref
            elif item.ValueType == "NUM" and concept == _PROBABILITY:
                holders["probability_ds"] = holders["probability_fd"] = item.MeasuredValueSequence[
                    0
                ]
            elif item.ValueType == "CODE" and concept == tuple(finding):
                code = item.ConceptCodeSequence[0]
                holders["code_value"] = holders["code_scheme"] = holders["code_meaning"] = code
        missing = [name for name, tag, _ in LEAVES if tag not in holders.get(name, ())]
        if missing:
            raise ValueError(f"measurement group {k} lacks {missing}")
        out.append(holders)
    return out


def encode_leaf(tag: int, vr: str, value: Any) -> bytes:
    """One data element, Explicit VR Little Endian (short-length VRs; ASCII text)."""
    if vr == "FD":
        data = struct.pack("<d", float(value))
    else:
        data = str(value).encode("ascii")
        if len(data) % 2:
            data += b"\0" if vr == "UI" else b" "
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(data)) + data


def _undefined_lengths(ds: Dataset) -> None:
    for elem in ds:
        if elem.VR == "SQ":
            elem.is_undefined_length = True
            for item in elem.value:
                item.is_undefined_length_sequence_item = True
                _undefined_lengths(item)


def _encoded(elem: Any, encodings: list[str]) -> tuple[str, int, bytes]:
    """(VR, length field, value bytes) of one element as pydicom writes it."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_data_element(fp, elem, encodings)
    data = fp.getvalue()
    vr = data[4:6].decode()
    if vr in _LONG_VRS:
        (length,) = struct.unpack("<I", data[8:12])
        value = data[12:]
    else:
        (length,) = struct.unpack("<H", data[6:8])
        value = data[8:]
    if length == 0xFFFFFFFF:
        value = value[:-8]  # the sequence delimiter, which pydicom writes after a raw element
    return vr, length, value


def _sentinels(n_groups: int) -> Iterator[tuple[int, str, int, str, Any]]:
    """(group, leaf, tag, VR, a value found nowhere else) for every leaf of every group."""
    for k in range(n_groups):
        for j, (name, tag, vr) in enumerate(LEAVES):
            serial = 1000 * (k + 1) + j
            if vr == "UI":
                value = f"1.2.3.4.987654321.{serial}"
            elif vr == "DS":
                value = f"0.98765{serial}"
            elif vr == "FD":
                value = 1.0 + serial / 1e6 + 1e-9 * 123456789
            else:
                value = f"ZQX{serial}"
            yield k, name, tag, vr, value


class ContentTemplate:
    """The root content elements of one report layout, with each group's leaves to fill.

    Args:
        content: the root content elements of an SR highdicom built (ValueType, concept name,
            continuity, template, ContentSequence); not modified.
        finding_codes: each measurement group's finding (code value, scheme), in order.
        encodings: the SR's character encodings (from its SpecificCharacterSet).

    Raises:
        ValueError: a layout this template cannot fill (see :func:`leaf_holders`), or a leaf
            whose bytes are not found exactly once.
    """

    def __init__(
        self, content: Dataset, finding_codes: Sequence[tuple[str, str]], encodings: list[str]
    ) -> None:
        encodings = convert_encodings(encodings)
        self.n_groups = len(finding_codes)
        self.fixed: dict[int, RawDataElement] = {}
        for elem in content:
            if elem.tag != CONTENT_SEQUENCE:
                self.fixed[elem.tag] = self._raw(elem.tag, *_encoded(elem, encodings))
        tree = copy.deepcopy(content[CONTENT_SEQUENCE])
        holder = Dataset()
        holder[CONTENT_SEQUENCE] = tree
        groups = leaf_holders(holder, finding_codes)
        sentinels = list(_sentinels(self.n_groups))
        for k, name, tag, _, value in sentinels:
            groups[k][name][tag].value = value
        _undefined_lengths(holder)
        _, _, value = _encoded(holder[CONTENT_SEQUENCE], encodings)
        spots = []
        for k, name, tag, leaf_vr, sentinel in sentinels:
            needle = encode_leaf(tag, leaf_vr, sentinel)
            at = value.find(needle)
            if at < 0 or value.find(needle, at + 1) >= 0:
                raise ValueError(f"SR template: leaf {name} of group {k} not found exactly once")
            spots.append((at, len(needle), k, name, tag, leaf_vr))
        spots.sort()
        self.pieces: list[bytes] = []
        self.slots: list[tuple[int, str, int, str]] = []
        start = 0
        for at, size, k, name, tag, leaf_vr in spots:
            self.pieces.append(value[start:at])
            self.slots.append((k, name, tag, leaf_vr))
            start = at + size
        self.pieces.append(value[start:])

    @staticmethod
    def _raw(tag: int, vr: str, length: int, value: bytes) -> RawDataElement:
        return RawDataElement(Tag(tag), vr, length, value, 0, False, True)

    def elements(self, leaves: Sequence[dict[str, Any]]) -> dict[int, RawDataElement]:
        """The root content elements (tag -> raw element) with each group's ``leaves`` in:
        one mapping per group, keyed by the names of :data:`LEAVES`."""
        if len(leaves) != self.n_groups:
            raise ValueError(f"{self.n_groups} measurement groups for {len(leaves)} outputs")
        parts = [self.pieces[0]]
        for (k, name, tag, vr), piece in zip(self.slots, self.pieces[1:], strict=True):
            parts.append(encode_leaf(tag, vr, leaves[k][name]))
            parts.append(piece)
        out = dict(self.fixed)
        out[CONTENT_SEQUENCE] = self._raw(CONTENT_SEQUENCE, "SQ", 0xFFFFFFFF, b"".join(parts))
        return out


def decoded_items(raw: RawDataElement, charset: Any = None) -> list[Dataset]:
    """The items of an encoded sequence element, decoded in ``charset``."""
    encodings = convert_encodings(charset or [])
    seq = read_sequence(DicomBytesIO(raw.value), False, True, len(raw.value), encodings)
    return list(seq)


def as_written(elem: Any, charset: Any = None) -> list[Dataset]:
    """The items of a sequence element as a reader of the file gets them (text outside the
    character set turned into what pydicom writes for it)."""
    encodings = convert_encodings(charset or [])
    return decoded_items(ContentTemplate._raw(elem.tag, *_encoded(elem, encodings)), charset)


def probability_ds(p: float) -> str:
    """The probability as the SR's DS, formatted as highdicom formats it."""
    return str(DS(float(p), auto_format=True))
