"""Secondary Capture overlays: readable by pydicom, in the source study, referencing the source."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from chestxr.explain import write_secondary_capture
from chestxr.explain.secondary_capture import SECONDARY_CAPTURE_SOP_CLASS
from tests.helpers import dicom


@pytest.fixture
def source(tmp_path):
    ds = dicom.radiograph(
        np.arange(48, dtype=np.uint16).reshape(8, 6),
        bits_stored=12,
        sop_class="1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage
        PatientName="Doe^Jane",
        PatientID="P123",
        PatientBirthDate="19700101",
        PatientSex="F",
        StudyInstanceUID=generate_uid(),
        SeriesInstanceUID=generate_uid(),
    )
    path = tmp_path / "source.dcm"
    return dicom.write(ds, path)


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
