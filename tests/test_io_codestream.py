"""The decompression-bomb guard reads compressed frames' own sizes; pydicom's own files all read."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from chestxr.io import RadiographReadError, read_header, read_radiograph
from chestxr.io.codestream import CodestreamError, codestream_size

ROOT = Path(__file__).resolve().parents[1]


def grey_ds(rows: int = 64, columns: int = 64) -> Dataset:
    """A minimal 8-bit MONOCHROME2 Secondary Capture header, without pixel data."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    return ds


def jpeg_dicom(path: Path, *, sof_size: tuple[int, int] | None = None) -> Path:
    """A 64 x 64 JPEG-baseline DICOM; ``sof_size`` rewrites the size its SOF marker declares."""
    pixels = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=95)
    jpeg = bytearray(buf.getvalue())
    if sof_size is not None:
        at = jpeg.find(b"\xff\xc0")
        jpeg[at + 5 : at + 9] = struct.pack(">HH", *sof_size)
    ds = grey_ds()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([bytes(jpeg)])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_jpeg_within_its_header_reads(tmp_path):
    out = read_radiograph(jpeg_dicom(tmp_path / "ok.dcm"))
    assert out.shape == (64, 64) and out.dtype == np.float32
    assert out[:, -1].mean() > out[:, 0].mean()  # the ramp survived


def test_jpeg_codestream_bomb_is_refused_before_decoding(tmp_path):
    """Header 64 x 64, codestream 20000 x 20000: refused with low peak memory (was ~2 GB)."""
    path = jpeg_dicom(tmp_path / "bomb.dcm", sof_size=(20000, 20000))
    code = textwrap.dedent(
        f"""
        from chestxr.io import RadiographReadError, read_radiograph
        try:
            read_radiograph({str(path)!r})
        except RadiographReadError as err:
            print("REFUSED", err)
        # VmHWM: this process's peak RSS (ru_maxrss would include the parent's, kept over exec)
        status = open("/proc/self/status").read()
        print("PEAK_MB", int(status.split("VmHWM:")[1].split()[0]) / 1024)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    refused = [line for line in proc.stdout.splitlines() if line.startswith("REFUSED")]
    assert refused, proc.stdout
    assert "bomb.dcm" in refused[0] and "20000 x 20000" in refused[0] and "64 x 64" in refused[0]
    peak = float(proc.stdout.split("PEAK_MB")[1])
    assert peak < 500, f"peak RSS {peak:.0f} MB"


def test_codestream_larger_than_max_pixels_is_refused(tmp_path):
    path = jpeg_dicom(tmp_path / "ok.dcm")
    with pytest.raises(RadiographReadError, match="max_pixels=1000"):
        read_radiograph(path, max_pixels=1000)


@pytest.mark.parametrize("tsyntax", [JPEG2000Lossless, JPEGLSLossless, RLELossless])
def test_codestream_that_disagrees_with_the_header_is_refused(tmp_path, tsyntax):
    pixels = np.arange(48 * 40, dtype=np.uint8).reshape(48, 40)
    ds = grey_ds(48, 40)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds.PixelData = pixels.tobytes()
    try:
        ds.compress(tsyntax)
    except RuntimeError as err:  # an encoder plugin missing: say so, never skip silently
        pytest.fail(f"no encoder for {tsyntax.name}: {err}")
    good = tmp_path / "good.dcm"
    ds.save_as(good, enforce_file_format=True)
    np.testing.assert_allclose(read_radiograph(good, voi="minmax") * 255, pixels, atol=1e-3)
    frame = pydicom.encaps.get_frame(ds.PixelData, 0, number_of_frames=1)
    expected = None if tsyntax == RLELossless else (48, 40)
    assert codestream_size(frame, tsyntax) == expected
    if expected is None:
        return  # RLE frames are sized from Rows/Columns by the decoder itself
    ds.Rows = 24  # the header now claims half the codestream's height
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad, enforce_file_format=True)
    with pytest.raises(RadiographReadError, match=r"48 x 40 pixels, the header says 24 x 40"):
        read_radiograph(bad)


def test_truncated_codestream_header_is_a_read_error():
    with pytest.raises(CodestreamError, match="start-of-image"):
        codestream_size(b"\x00\x01", JPEGBaseline8Bit)
    with pytest.raises(CodestreamError, match="SIZ"):
        codestream_size(b"\xff\x4f\xff\x51\x00\x29", JPEG2000Lossless)


def test_bad_number_of_frames_is_refused_as_not_a_number():
    """pydicom's badVR.dcm: Number of Frames '1A' (was a string repetition in the guard)."""
    path = pydicom.data.get_testdata_file("badVR.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(
            RadiographReadError,
            match=r"NumberOfFrames is not a whole number: '1A'",
        ):
            read_radiograph(path)
        with pytest.raises(RadiographReadError, match="1A"):
            read_header(path)


def test_every_file_shipped_with_pydicom_reads_or_says_why():
    """Each reads as a finite 2-D float32 image or raises RadiographReadError naming it."""
    files = [f for f in pydicom.data.get_testdata_files() if os.path.isfile(f)]
    assert len(files) > 50, files  # the wheel's own test files are there
    read, refused = 0, 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in files:
            try:
                image = read_radiograph(path)
            except RadiographReadError as err:
                assert path in str(err), err
                refused += 1
                continue
            assert image.ndim == 2 and image.dtype == np.float32, path
            assert np.isfinite(image).all(), path
            read += 1
    assert read > 30 and refused > 0, (read, refused)
