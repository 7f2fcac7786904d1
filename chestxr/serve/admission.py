"""What the node scores: radiograph storage SOP classes whose header, where it says, is of a
frontal chest view; the rest gets a failure record with the reason, never a score."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom.sop_class import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)

from chestxr.explain.secondary_capture import MANUFACTURER

RADIOGRAPH_SOP_CLASSES: tuple[UID, ...] = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)
# Modality, where the header gives it (a Secondary Capture of a radiograph: digitised film RG,
# the retired DR some digitisers still write, or OT)
RADIOGRAPH_MODALITIES = ("CR", "DX", "RG", "DR", "OT")
# Secondary Captures that are not an image of a radiograph: workstation screens (chestxr's own
# Grad-CAM results among them), scanned documents, drawings, synthetic images
NOT_RADIOGRAPH_CONVERSIONS = ("WSD", "SD", "DRW", "SYN")
FRONTAL_VIEWS = ("PA", "AP")
CHEST_BODY_PARTS = ("CHEST", "THORAX", "LUNG")
# type 1 attributes without which an instance is not scored: the UIDs its results are filed by
# (the source's study, beside its series) and Modality (highdicom's check of the source image)
REQUIRED = ("SOPInstanceUID", "StudyInstanceUID", "SOPClassUID", "SeriesInstanceUID", "Modality")


class NotScorable(Exception):
    """An instance that gets a failure record, with the reason, never a score."""


def _text(ds: Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip().upper()


def sop_class(ds: Dataset) -> UID:
    """The SOP class of ``ds``: its SOPClassUID, else its file meta's (empty when neither)."""
    meta = getattr(ds, "file_meta", None)
    meta_class = meta.get("MediaStorageSOPClassUID", "") if meta is not None else ""
    return UID(str(ds.get("SOPClassUID", "") or meta_class or ""))


def check_frontal_chest(ds: Dataset) -> None:
    """Refuse what the header says is not a frontal chest radiograph.

    Refused: a SOP class other than CR, DX or Secondary Capture; a Modality other than those of
    :data:`RADIOGRAPH_MODALITIES`; a Secondary Capture of a workstation screen, document,
    drawing or synthetic image (``ConversionType``); chestxr's own results; a BodyPartExamined
    other than the chest; a ViewPosition other than PA/AP. Absent or empty SOP class, Modality,
    BodyPartExamined and ViewPosition are accepted here (many sources leave the last two out;
    the node requires the first two of what it receives by DICOM: :data:`REQUIRED`).

    Raises:
        NotScorable: the reason, in words.
    """
    klass = sop_class(ds)
    if klass and klass not in RADIOGRAPH_SOP_CLASSES:
        raise NotScorable(f"not a radiograph: SOP class {klass.name}")
    modality = _text(ds, "Modality")
    if modality and modality not in RADIOGRAPH_MODALITIES:
        raise NotScorable(f"not a radiograph: Modality {modality!r}")
    conversion = _text(ds, "ConversionType")
    if klass == SecondaryCaptureImageStorage and conversion in NOT_RADIOGRAPH_CONVERSIONS:
        raise NotScorable(f"not a radiograph: Secondary Capture of ConversionType {conversion!r}")
    if str(ds.get("Manufacturer", "") or "").strip() == MANUFACTURER:  # they must not come back
        raise NotScorable("a chestxr result, not a scan")
    body = _text(ds, "BodyPartExamined")
    if body and body not in CHEST_BODY_PARTS:
        raise NotScorable(f"not a chest radiograph: BodyPartExamined is {body!r}")
    view = _text(ds, "ViewPosition")
    if view and view not in FRONTAL_VIEWS:
        raise NotScorable(f"not a frontal view: ViewPosition is {view!r} (need PA or AP)")
