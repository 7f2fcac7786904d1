"""Secondary Capture overlays: readable by pydicom, in the source study, referencing the source."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from chestxr.explain import write_secondary_capture
from chestxr.explain.secondary_capture import SECONDARY_CAPTURE_SOP_CLASS


@pytest.fixture
def source(tmp_path):
    ds = Dataset()
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "P123"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.Rows, ds.Columns = 8, 6
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.arange(48, dtype=np.uint16).reshape(8, 6).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "source.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_secondary_capture_round_trip(tmp_path, source) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, size=(8, 6, 3), dtype=np.uint8)
    out = write_secondary_capture(rgb, source, tmp_path / "sc" / "cam.dcm")
    src = pydicom.dcmread(source)
    sc = pydicom.dcmread(out)
    assert sc.SOPClassUID == SECONDARY_CAPTURE_SOP_CLASS
    assert sc.file_meta.MediaStorageSOPClassUID == SECONDARY_CAPTURE_SOP_CLASS
    assert sc.StudyInstanceUID == src.StudyInstanceUID
    assert sc.SeriesInstanceUID != src.SeriesInstanceUID
    assert sc.SOPInstanceUID != src.SOPInstanceUID
    assert sc.PatientName == src.PatientName and sc.PatientID == "P123"
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert sc.SourceImageSequence[0].ReferencedSOPClassUID == src.SOPClassUID
    ref = sc.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == src.SeriesInstanceUID
    assert ref.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert sc.PhotometricInterpretation == "RGB" and sc.SeriesDescription == "chestxr Grad-CAM"
    np.testing.assert_array_equal(sc.pixel_array, rgb)
    # a second capture of the same source is a new instance in a new series
    again = pydicom.dcmread(write_secondary_capture(rgb, src, tmp_path / "again.dcm"))
    assert again.SOPInstanceUID != sc.SOPInstanceUID


def test_secondary_capture_rejects_bad_input(tmp_path, source) -> None:
    with pytest.raises(ValueError, match="uint8"):
        write_secondary_capture(np.zeros((8, 6, 3)), source, tmp_path / "x.dcm")
    with pytest.raises(ValueError, match="uint8"):
        write_secondary_capture(np.zeros((8, 6), dtype=np.uint8), source, tmp_path / "x.dcm")
    incomplete = pydicom.dcmread(source)
    del incomplete.StudyInstanceUID
    with pytest.raises(ValueError, match="StudyInstanceUID"):
        write_secondary_capture(np.zeros((8, 6, 3), dtype=np.uint8), incomplete, tmp_path / "x.dcm")
