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

RADIOGRAPH_SOP_CLASSES: tuple[UID, ...] = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)
# a Secondary Capture is scored as a radiograph only with one of these modalities (or none)
CAPTURED_MODALITIES = ("CR", "DX", "RG", "OT")
FRONTAL_VIEWS = ("PA", "AP")
CHEST_BODY_PARTS = ("CHEST", "THORAX", "LUNG")
# type 1 attributes a result cannot be filed without (in the source's study, beside its series)
REQUIRED = ("SOPInstanceUID", "StudyInstanceUID", "SOPClassUID", "SeriesInstanceUID", "Modality")


class NotScorable(Exception):
    """An instance that gets a failure record, with the reason, never a score."""


def _text(ds: Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip().upper()


def check_frontal_chest(ds: Dataset) -> None:
    """Refuse what the header says is not a frontal chest radiograph.

    A SOP class other than CR, DX or Secondary Capture is refused, as is a Secondary Capture of
    another modality (CT, MR, ...). Absent or empty BodyPartExamined / ViewPosition are accepted
    (many sources leave them out).

    Raises:
        NotScorable: not a radiograph, a body part other than the chest, or a view other than
            PA/AP.
    """
    sop_class = UID(str(ds.get("SOPClassUID", "") or ""))
    if sop_class and sop_class not in RADIOGRAPH_SOP_CLASSES:
        raise NotScorable(f"not a radiograph: SOP class {sop_class.name}")
    modality = _text(ds, "Modality")
    if sop_class == SecondaryCaptureImageStorage and modality not in ("", *CAPTURED_MODALITIES):
        raise NotScorable(f"not a radiograph: Secondary Capture of Modality {modality!r}")
    body = _text(ds, "BodyPartExamined")
    if body and body not in CHEST_BODY_PARTS:
        raise NotScorable(f"not a chest radiograph: BodyPartExamined is {body!r}")
    view = _text(ds, "ViewPosition")
    if view and view not in FRONTAL_VIEWS:
        raise NotScorable(f"not a frontal view: ViewPosition is {view!r} (need PA or AP)")
