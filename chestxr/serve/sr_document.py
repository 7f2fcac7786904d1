"""The SR document around the content, made per instance without highdicom.

highdicom builds an SR document (:class:`highdicom.sr.Comprehensive3DSR`) with ~300 attribute
assignments through pydicom, and pydicom then encodes every one of them: ~4 ms to build and
~4 ms to encode per SR measured here, a sixth of the node's CPU per instance outside the
forward pass. What changes in the document from one scored instance to the next is known from
highdicom's constructor: the SR's own UIDs and creation times, the attributes copied from the
source (its Patient, Clinical Trial Subject, General Study, Patient Study and Clinical Trial
Study modules, as highdicom copies them), the evidence reference to the source, and the
contributing equipment (the source's acquisition equipment and highdicom, with the time).

:class:`DocumentTemplate` keeps the rest of a document highdicom built (series, equipment,
flags, SOP class, character set...) encoded once, and makes each instance's document from it
and the instance's own values, set as highdicom sets them. A template serves sources of one
shape only (the same SOP class, character set and attribute tags: :func:`source_shape`), so that
no attribute one source has and the next lacks is carried over. Each template checks itself when
made, against highdicom, on a copy of its source whose UIDs and every single-valued text,
number, date and time are changed: a template that would carry any of them over from its source
is not used (that shape's documents stay highdicom's, with a warning) instead of a stale value
being served. ``tests/test_serve_results.py`` holds the documents equal to highdicom's, element
for element, over varied sources, several of each shape.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
from collections.abc import Callable
from typing import Any

import highdicom as hd
from highdicom.enum import PatientSexValues
from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.valuerep import DA, TM, PersonName

from chestxr.serve import file_meta
from chestxr.serve.sr_template import ContentTemplate, _encoded

try:
    from highdicom import _standard_utils as standard
except ImportError:  # highdicom < 0.28: the tables live elsewhere; no template is made
    standard = None

# the information entities whose root attributes highdicom copies from the source
_COPIED_ENTITIES = ("Patient", "Study")
# set by highdicom per document, whatever the source
_PER_DOCUMENT = (
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "InstanceCreationDate",
    "InstanceCreationTime",
    "ContentDate",
    "ContentTime",
    "CurrentRequestedProcedureEvidenceSequence",
    "ContributingEquipmentSequence",
    # set by highdicom's constructor from the source (and copied over from it after)
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
# changed in the copy of the source a template checks itself on
_PERTURBED_UIDS = {
    "SOPInstanceUID": "1.2.826.0.1.3680043.8.498.101",
    "SeriesInstanceUID": "1.2.826.0.1.3680043.8.498.102",
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.103",
}
# the longest value of each text VR the check changes (by putting "Z" in front)
_TEXT_VRS = {"AE": 16, "LO": 64, "LT": 10240, "PN": 64, "SH": 16, "ST": 1024, "UC": 1024}
# another valid value for each VR of numbers, dates and times (and a second where it is the same)
_OTHER_VALUES = {
    "AS": ("099Y", "098Y"),
    "DA": ("19010203", "19020304"),
    "TM": ("010203", "020304"),
    "DT": ("19010203010203", "19020304020304"),
    "DS": ("1.5", "2.5"),
    "IS": ("7", "8"),
}
# what highdicom stamps with the time of the build
_NOW = ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime")


def available() -> bool:
    """Whether this highdicom keeps the standard's tables where templates read them."""
    return standard is not None and hasattr(standard, "get_module_attribute_map")


@functools.lru_cache(maxsize=64)
def copied_tags(sop_class_uid: str) -> tuple[int, ...]:
    """The tags highdicom copies from a source of ``sop_class_uid`` into an SR: the root
    attributes of its IOD's patient and study modules (its
    ``copy_patient_and_study_information``)."""
    iod = standard.get_sop_class_iod_map()[sop_class_uid]
    attributes = standard.get_module_attribute_map()
    tags = []
    for module in standard.get_iod_module_map()[iod]:
        if module["ie"] not in _COPIED_ENTITIES:
            continue
        for item in attributes[module["key"]]:
            if len(item["path"]) == 0:
                tags.append(tag_for_keyword(str(item["keyword"])))
    return tuple(dict.fromkeys(tags))


def source_shape(source: Dataset) -> tuple:
    """What a template depends on in a source besides its values: SOP class, character set
    and the set of its top-level tags."""
    return (str(source.SOPClassUID), charset_key(source), frozenset(source.keys()))


def charset_key(source: Dataset) -> str | tuple[str, ...] | None:
    """``source``'s Specific Character Set as a key: a multi-valued one (ISO 2022 code
    extensions) as a tuple."""
    charset = source.get("SpecificCharacterSet")
    return charset if charset is None or isinstance(charset, str) else tuple(charset)


class DocumentTemplate:
    """The documents highdicom would build around a content for sources of one shape.

    Args:
        document: an SR highdicom built (:func:`chestxr.serve.results.build_sr`'s document)
            for ``source``; not modified.
        source: its source (with the type 2 attributes highdicom reads present).
        build: ``build(source)``: highdicom's document for another source (its UIDs derived
            from that source's), to check the template against.
        content_tags: the root content tags, left out (filled per instance).

    Raises:
        RuntimeError: the template does not make highdicom's document for a changed copy of
            ``source`` (the caller then keeps to highdicom's for this shape).
    """

    def __init__(
        self,
        document: Dataset,
        source: Dataset,
        build: Callable[[Dataset], Dataset],
        content_tags: tuple[int, ...],
    ) -> None:
        charset = document.get("SpecificCharacterSet")
        encodings = convert_encodings(charset or [])
        per_instance = {tag_for_keyword(k) for k in _PER_DOCUMENT}
        per_instance |= set(copied_tags(str(source.SOPClassUID))) | set(content_tags)
        self.fixed: list[RawDataElement] = [
            ContentTemplate._raw(elem.tag, *_encoded(elem, encodings))
            for elem in document
            if elem.tag not in per_instance
        ]
        # the values, not the elements: ``document`` goes on to be an SR of its own
        self.meta = [(elem.tag, elem.VR, elem.value) for elem in document.file_meta]
        # what pydicom's dcmwrite encodes the text with, and each fixed element as it writes it
        self._charset = charset if charset is not None else default_encoding
        self._written = {elem.tag: _written(elem) for elem in self.fixed}
        self._check(source, build, set(content_tags))

    def _check(
        self, source: Dataset, build: Callable[[Dataset], Dataset], content_tags: set[int]
    ) -> None:
        """Build the document of a changed copy of ``source`` both ways and compare."""
        uids = {tag_for_keyword(keyword): uid for keyword, uid in _PERTURBED_UIDS.items()}
        other = Dataset()  # new elements where changed: ``source`` stays as it is
        for elem in source:
            value = uids.get(elem.tag) or _changed(elem)
            if value is None:
                other.add(elem)
            else:
                other.add_new(elem.tag, elem.VR, value)
        theirs = build(other)
        ours = self.document(other, theirs.SOPInstanceUID, theirs.SeriesInstanceUID)
        if _comparable(ours, content_tags) != _comparable(theirs, content_tags):
            raise RuntimeError("the SR document template does not reproduce highdicom's document")

    def document(self, source: Dataset, sop_instance_uid: str, series_instance_uid: str) -> Dataset:
        """The document of ``source`` (of this template's shape; its type 2 attributes present),
        without content: what highdicom's constructor makes, attribute for attribute.

        Raises:
            ValueError: a source value highdicom refuses (its patient sex, a date or time).
        """
        return self.around(self.variable(source, sop_instance_uid, series_instance_uid))

    def variable(self, source: Dataset, sop_instance_uid: str, series_instance_uid: str) -> Dataset:
        """The elements of ``source``'s document that are not this template's fixed ones.

        Raises:
            ValueError: a source value highdicom refuses (its patient sex, a date or time).
        """
        now = datetime.datetime.now()
        sex = source.PatientSex
        sr = Dataset()
        # as highdicom's constructor sets them (and checks them: a bad value raises there)
        sr.PatientID = source.PatientID
        sr.PatientName = source.PatientName
        sr.PatientBirthDate = DA(source.PatientBirthDate)
        sr.PatientSex = PatientSexValues(sex).value if sex not in (None, "") else sex
        sr.StudyInstanceUID = str(source.StudyInstanceUID)
        sr.AccessionNumber = source.AccessionNumber
        sr.StudyID = source.StudyID
        sr.StudyDate = DA(source.StudyDate) if source.StudyDate is not None else None
        sr.StudyTime = TM(source.StudyTime) if source.StudyTime is not None else None
        sr.ReferringPhysicianName = source.get("ReferringPhysicianName")
        sr.SeriesInstanceUID = series_instance_uid
        sr.SOPInstanceUID = sop_instance_uid
        sr.InstanceCreationDate = DA(now.date())
        sr.InstanceCreationTime = TM(now.time())
        sr.ContentDate = DA(now.date())
        sr.ContentTime = TM(now.time())
        sr.CurrentRequestedProcedureEvidenceSequence = [self._evidence(source)]
        for tag in copied_tags(str(source.SOPClassUID)):  # copied over, as highdicom does
            if tag in source:
                sr.add(source[tag])
        equipment = []
        with contextlib.suppress(Exception):  # highdicom leaves it out too (no manufacturer...)
            equipment.append(hd.ContributingEquipment.for_image_acquisition(source))
        equipment.append(hd.ContributingEquipment.for_highdicom())
        sr.ContributingEquipmentSequence = equipment
        return sr

    def around(self, variable: Dataset) -> Dataset:
        """The whole document: the fixed elements, ``variable``'s and the file meta."""
        sr = Dataset()
        sr.preamble = b"\x00" * 128
        sr.file_meta = FileMetaDataset()  # elements of its own: another SR's are not touched
        for tag, vr, value in self.meta:
            sr.file_meta.add_new(tag, vr, value)
        sr.file_meta.MediaStorageSOPInstanceUID = variable.SOPInstanceUID
        for elem in self.fixed:
            sr[elem.tag] = elem
        for elem in variable:
            sr.add(elem)
        return sr

    def encode(self, variable: Dataset, content: dict[int, Any]) -> bytes:
        """The SR file of ``around(variable)`` with the root ``content`` elements in, as
        pydicom's ``dcmwrite`` writes it (Explicit VR Little Endian, the file meta enforced):
        the fixed elements' bytes written once at the template's making, the others encoded
        by pydicom's element writer. The caller checks it against ``dcmwrite`` (see
        :meth:`chestxr.serve.results.ReportBuilder.encode`).
        """
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, False
        instance = (file_meta.SOP_INSTANCE, "UI", str(variable.SOPInstanceUID))
        fp.write(file_meta.file_header([*self.meta, instance]))  # the last UID given counts
        elements = {elem.tag: elem for elem in variable}
        elements.update(content)
        for tag in sorted(self._written.keys() | elements.keys()):
            if tag in elements:
                write_data_element(fp, elements[tag], self._charset)
            else:
                fp.write(self._written[tag])
        return fp.getvalue()

    def _evidence(self, source: Dataset) -> Dataset:
        """The Current Requested Procedure Evidence item referencing ``source``."""
        sop = Dataset()
        sop.ReferencedSOPClassUID = source.SOPClassUID
        sop.ReferencedSOPInstanceUID = source.SOPInstanceUID
        series = Dataset()
        series.ReferencedSOPSequence = [sop]
        series.SeriesInstanceUID = source.SeriesInstanceUID
        study = Dataset()
        study.ReferencedSeriesSequence = [series]
        study.StudyInstanceUID = source.StudyInstanceUID
        return study


def _written(elem: Any) -> bytes:
    """An element as pydicom's element writer writes it (Explicit VR Little Endian)."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_data_element(fp, elem)
    return fp.getvalue()


def _changed(elem: Any) -> Any:
    """Another valid value for a single-valued text, number, date or time element (None for
    the rest: code strings, sequences, binary and multi-valued elements, empty ones)."""
    value = str(elem.value) if isinstance(elem.value, PersonName) else elem.value
    if elem.VR == "SQ" or not value or not isinstance(value, str | int | float):
        return None
    if elem.VR in _TEXT_VRS:
        text = str(value)
        changed = ("Z" + text)[: _TEXT_VRS[elem.VR]]
        return changed if changed != text else ("Y" + text)[: _TEXT_VRS[elem.VR]]
    if elem.VR in _OTHER_VALUES:
        first, second = _OTHER_VALUES[elem.VR]
        return first if str(value) != first else second
    return None


def _comparable(ds: Dataset, skip: set[int] = frozenset()) -> dict[int, Any]:
    """``ds``'s elements (but ``skip``) by tag, VR and value, with the values stamped with the
    time of the build left out."""
    out: dict[int, Any] = {}
    for elem in ds:
        if elem.tag in skip or elem.keyword in _NOW:
            continue
        if elem.keyword == "ContributingEquipmentSequence":  # highdicom's own item: its time
            items = [_comparable(item) for item in elem.value]
            if items:
                items[-1].pop(tag_for_keyword("ContributionDateTime"), None)
            out[elem.tag] = items
        elif elem.VR == "SQ":
            out[elem.tag] = [_comparable(item) for item in elem.value]
        else:
            out[elem.tag] = (elem.VR, elem.value)
    return out
