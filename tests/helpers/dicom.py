"""One builder for the small DICOM files the tests write (instead of a hand-made Dataset each)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def radiograph(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    modality: str = "DX",
    sop_class: str = SecondaryCaptureImageStorage,
    sop_uid: str | None = None,
    file_meta: bool = True,
    **elements: object,
) -> Dataset:
    """A minimal image dataset holding ``pixels``.

    Args:
        pixels: 2-D (rows, columns), 3-D (frames, rows, columns) or colour (rows, columns, 3);
            its dtype sets Bits Allocated and Pixel Representation.
        photometric: Photometric Interpretation; ``RGB``/``YBR_FULL`` make a colour image.
        bits_stored: Bits Stored (default: Bits Allocated); High Bit follows.
        modality: Modality.
        sop_class: SOP Class UID (default: Secondary Capture).
        sop_uid: SOP Instance UID (default: a new one; pass a fixed one for byte-stable files).
        file_meta: give the dataset a file meta header (explicit VR little endian).
        elements: further attributes by keyword (``WindowCenter=40``, ``PatientID="P1"``...).

    Returns:
        The dataset, for :func:`write` or further changes.
    """
    pixels = np.asarray(pixels)
    colour = photometric in ("RGB", "YBR_FULL")
    ds = Dataset()
    uid = sop_uid or generate_uid()
    if file_meta:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid
    ds.Modality = modality
    ds.PhotometricInterpretation = photometric
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    shape = pixels.shape[:-1] if colour else pixels.shape
    if len(shape) == 3:
        ds.NumberOfFrames = shape[0]
    ds.Rows, ds.Columns = shape[-2:]
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    ds.PixelData = pixels.tobytes()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def write(ds: Dataset, path: Path) -> Path:
    """Save ``ds`` as a DICOM file (preamble and meta header), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_radiograph(path: Path, pixels: np.ndarray, **options: object) -> Path:
    """:func:`radiograph` written to ``path``; ``options`` as for :func:`radiograph`."""
    return write(radiograph(pixels, **options), path)
