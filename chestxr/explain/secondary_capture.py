"""Overlays back into PACS: an RGB DICOM Secondary Capture in the source image's study."""

from __future__ import annotations

import datetime as dt
import io
import logging
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from chestxr.io.dicom import read_dicom_dataset
from chestxr.utils.files import atomic_write_bytes

log = logging.getLogger(__name__)

SECONDARY_CAPTURE_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"
MANUFACTURER = "chestxr"  # of every object chestxr writes (the node refuses them as input)
# Patient module and the study-level attributes the new series shares with its source.
_COPIED = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "OtherPatientIDsSequence",
    "PatientComments",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
    "PatientAge",
    "PatientOrientation",
)
# type 2 in the Secondary Capture's Patient and General Study modules (2C in General Image for
# Patient Orientation, required here): present, empty when the source leaves them out
# (de-identification tools often drop them)
_TYPE_2 = (
    "PatientOrientation",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def write_secondary_capture(
    overlay_rgb: np.ndarray,
    source_dataset_path: str | Path | Dataset,
    out_path: str | Path,
    *,
    series_description: str = "chestxr Grad-CAM",
    series_number: int = 9001,
) -> Path:
    """Write an overlay as a DICOM Secondary Capture image in the source radiograph's study.

    The new object (SOP Class 1.2.840.10008.5.1.4.1.1.7, RGB, 8 bits) keeps the source's patient
    module and StudyInstanceUID (type 2 attributes the source leaves out are written empty), gets
    a new SeriesInstanceUID and SOPInstanceUID, and references the source image in
    ``ReferencedSeriesSequence`` and ``SourceImageSequence``. ImageType is DERIVED\\SECONDARY, and
    the derivation is described in ``DerivationDescription``.

    Args:
        overlay_rgb: ``(H, W, 3)`` uint8 image, e.g. from
            :func:`~chestxr.explain.overlay.blend_overlay`.
        source_dataset_path: the source DICOM file (or its dataset, read without pixels).
        out_path: file to write (parents created; replaced atomically).
        series_description: SeriesDescription of the new series.
        series_number: SeriesNumber of the new series.

    Returns:
        The path written.

    Raises:
        RadiographReadError: the source file holds no DICOM image.
        ValueError: ``overlay_rgb`` is not an ``(H, W, 3)`` uint8 array, or the source lacks
            StudyInstanceUID, SOPClassUID or SOPInstanceUID.
    """
    rgb = np.asarray(overlay_rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"overlay_rgb must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    if isinstance(source_dataset_path, Dataset):
        src = source_dataset_path
    else:
        # as the reader reads it: also without preamble and file meta header (ACR-NEMA style)
        src = read_dicom_dataset(source_dataset_path, stop_before_pixels=True)
    for key in ("StudyInstanceUID", "SOPClassUID", "SOPInstanceUID"):
        if key not in src:
            raise ValueError(f"source DICOM {source_dataset_path!s} lacks {key}")

    now = dt.datetime.now()
    ds = Dataset()
    for key in _COPIED:
        if key in src:
            ds[key] = src[key]
    for key in _TYPE_2:
        if key not in ds:
            setattr(ds, key, "")
    ds.SOPClassUID = SECONDARY_CAPTURE_SOP_CLASS
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.InstanceNumber = 1
    ds.ContentDate = ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.ContentTime = ds.InstanceCreationTime = now.strftime("%H%M%S")
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = f"{series_description}: class activation map over the source image"
    ds.BurnedInAnnotation = "NO"
    ds.Manufacturer = MANUFACTURER

    ref_instance = Dataset()
    ref_instance.ReferencedSOPClassUID = src.SOPClassUID
    ref_instance.ReferencedSOPInstanceUID = src.SOPInstanceUID
    ds.SourceImageSequence = DicomSequence([ref_instance])
    ref_series = Dataset()
    if "SeriesInstanceUID" in src:
        ref_series.SeriesInstanceUID = src.SeriesInstanceUID
    ref_series.ReferencedInstanceSequence = DicomSequence([ref_instance])
    ds.ReferencedSeriesSequence = DicomSequence([ref_series])

    rows, cols = rgb.shape[:2]
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(rgb).tobytes()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta

    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    out = atomic_write_bytes(out_path, buffer.getvalue(), overwrite=True)
    log.info("wrote secondary capture %s (%dx%d)", out, rows, cols)
    return out
