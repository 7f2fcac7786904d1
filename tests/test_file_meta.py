"""The file meta group encoded directly is pydicom's, byte for byte, and what it cannot encode it
refuses."""

from __future__ import annotations

import io

import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from chestxr.serve.file_meta import file_header

KEYWORDS = {
    0x00020001: "FileMetaInformationVersion",
    0x00020002: "MediaStorageSOPClassUID",
    0x00020003: "MediaStorageSOPInstanceUID",
    0x00020010: "TransferSyntaxUID",
    0x00020012: "ImplementationClassUID",
    0x00020013: "ImplementationVersionName",
    0x00020016: "SourceApplicationEntityTitle",
    0x00020100: "PrivateInformationCreatorUID",
    0x00020102: "PrivateInformation",
}


def pydicoms(elements: list[tuple[int, str, object]]) -> bytes:
    meta = FileMetaDataset()
    for tag, _, value in elements:
        setattr(meta, KEYWORDS[tag], value)
    fp = io.BytesIO()
    write_file_meta_info(fp, meta, enforce_standard=True)
    return b"\x00" * 128 + b"DICM" + fp.getvalue()


def elements(instance: str, version_name: str = "PYNETDICOM_304", extra: tuple = ()) -> list:
    out = [
        (0x00020001, "OB", b"\x00\x01"),
        (0x00020002, "UI", "1.2.840.10008.5.1.4.1.1.1"),  # CR: odd length
        (0x00020003, "UI", instance),
        (0x00020010, "UI", ExplicitVRLittleEndian),
        (0x00020012, "UI", "1.2.826.0.1.3680043.9.3811.3.0.4"),
        (0x00020013, "SH", version_name),
    ]
    return out + list(extra)


@pytest.mark.parametrize("length", [20, 21, 63, 64])
@pytest.mark.parametrize("version_name", ["PYNETDICOM_304", "highdicom0.28.2"])
def test_the_header_is_pydicoms(length: int, version_name: str) -> None:
    uid = generate_uid()[:length].rstrip(".")
    given = elements(uid, version_name)
    assert file_header(given) == pydicoms(given)
    assert file_header(reversed(given)) == pydicoms(given)  # in tag order whatever the order


def test_optional_elements_and_a_stale_group_length_are_written_as_pydicom_writes_them() -> None:
    optional = [(0x00020016, "AE", "MODALITY1"), (0x00020100, "UI", "1.2.3")]
    given = elements(generate_uid(), extra=(*optional, (0x00020102, "OB", b"x")))
    assert file_header([(0x00020000, "UL", 999), *given]) == pydicoms(given)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: [x for x in e if x[0] != 0x00020013], r"lacks \(0002,0013\)"),
        (lambda e: [*e, (0x00080016, "UI", "1.2")], "not a file meta element"),
        (lambda e: [*e, (0x00020016, "AE", "MODALITÄT")], "0016"),
        (lambda e: [*e, (0x00020016, "AE", "")], "0016"),
        (lambda e: [*e, (0x00020016, "AE", "A\\B")], "0016"),
        (lambda e: [*e, (0x00020016, "PN", "A")], "0016"),
        (lambda e: [*e, (0x00020016, "AE", "A" * 65)], "0016"),
        (lambda e: [*e, (0x00020100, "UI", "1.2.3 ")], "0100"),  # pydicom strips it
        (lambda e: [*e, (0x00020100, "UI", "1.2.3\x00")], "0100"),
        (lambda e: [x if x[0] != 0x00020001 else (x[0], "OB", b"") for x in e], "0001"),
        (lambda e: [*e, (0x00020000, "UL", 0), (0x00020102, "UL", 2**32)], "0102"),
    ],
)
def test_what_it_cannot_encode_is_refused_naming_the_element(change, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        file_header(change(elements(generate_uid())))
