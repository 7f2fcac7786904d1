"""chestxr.io on every real DICOM file of ../shared/data/dicom (INDEX.csv lists them all)."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np
import pytest

from chestxr.io import RadiographReadError, read_header, read_radiograph

pytestmark = pytest.mark.shared_data

# INDEX.csv is read at collection time only to name the parameters; every test asks for the
# `shared_data` fixture, which skips cleanly when the folder is absent.
_DATA = Path(
    os.environ.get("CHESTXR_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
_INDEX = _DATA / "dicom" / "INDEX.csv"
ROWS = list(csv.DictReader(_INDEX.open(newline="", encoding="utf-8"))) if _INDEX.is_file() else []
DECODABLE = [r for r in ROWS if not r["decode"].startswith("FAIL")]
CORRUPT = [r for r in ROWS if r["decode"].startswith("FAIL")]
# JPEG 2000 files of 2-5 Mpx take ~0.5-1.5 s each here; the whole file stays well under 60 s.


def _ids(rows: list[dict[str, str]]) -> list[str]:
    return [r["path"] for r in rows]


def _region(a: np.ndarray, rows: tuple[float, float], cols: tuple[float, float]) -> float:
    h, w = a.shape
    return float(a[int(rows[0] * h) : int(rows[1] * h), int(cols[0] * w) : int(cols[1] * w)].mean())


def test_index_lists_every_dicom_file(shared_data):
    on_disk = {
        p.relative_to(shared_data / "dicom").as_posix()
        for p in (shared_data / "dicom").rglob("*")
        if p.is_file() and p.name != "INDEX.csv"
    }
    assert on_disk == {r["path"] for r in ROWS}
    assert len(CORRUPT) == 2 and len(DECODABLE) == len(ROWS) - 2


@pytest.mark.parametrize("row", DECODABLE, ids=_ids(DECODABLE))
def test_decodable_file(shared_data, row):
    path = shared_data / "dicom" / row["path"]
    frames = int(row["frames"])
    if frames > 1:
        with pytest.raises(RadiographReadError, match=f"{frames} frames"):
            read_radiograph(path)
    out = read_radiograph(path, frame=0 if frames > 1 else None)
    assert out.dtype == np.float32
    assert out.shape == (int(row["rows"]), int(row["cols"]))
    assert np.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out.max() > out.min(), "a real image never comes out constant"


@pytest.mark.parametrize("row", ROWS, ids=_ids(ROWS))
def test_header_matches_index(shared_data, row):
    header = read_header(shared_data / "dicom" / row["path"])
    assert header["format"] == "dicom"
    assert (header["rows"], header["columns"], header["frames"]) == (
        int(row["rows"]),
        int(row["cols"]),
        int(row["frames"]),
    )
    assert header["photometric"] == row["photometric"]
    assert header["bits_stored"] == int(row["bits_stored"])
    assert header["modality"] == (row["modality"] or None)
    assert header["transfer_syntax"] == re.search(r"\(([\d.]+)\)$", row["transfer_syntax"])[1]
    assert "patient" not in " ".join(header).lower()


@pytest.mark.parametrize("row", CORRUPT, ids=_ids(CORRUPT))
def test_corrupt_file_raises_read_error_naming_it(shared_data, row):
    path = shared_data / "dicom" / row["path"]
    with pytest.raises(RadiographReadError) as err:
        read_radiograph(path)
    assert path.name in str(err.value)
    assert "could not be decoded" in err.value.reason
    assert row["transfer_syntax"].split(" (")[0] in err.value.reason


@pytest.mark.parametrize("voi", ["header", "minmax"])
@pytest.mark.parametrize(
    "name", ["xray/pylibjpeg-data/966_fixed.dcm", "xray/pylibjpeg-data/RG1_J2KI.dcm"]
)
def test_monochrome1_pa_chest_shows_bright_mediastinum_and_dark_lungs(shared_data, name, voi):
    out = read_radiograph(shared_data / "dicom" / name, voi=voi)[::4, ::4]
    centre = _region(out, (0.3, 0.7), (0.45, 0.55))  # spine and mediastinum
    lungs = (_region(out, (0.3, 0.6), (0.2, 0.35)) + _region(out, (0.3, 0.6), (0.65, 0.8))) / 2
    assert centre > lungs + 0.1


@pytest.mark.parametrize("voi", ["header", "minmax"])
def test_monochrome1_lateral_thorax_shows_bright_spine_dark_lung_black_air(shared_data, voi):
    out = read_radiograph(shared_data / "dicom" / "xray/highdicom/dx_image.dcm", voi=voi)
    air = _region(out, (0.0, 0.06), (0.6, 1.0))  # above the back
    spine = _region(out, (0.24, 0.32), (0.3, 0.9))
    lung = _region(out, (0.40, 0.55), (0.55, 0.68))
    assert air < 0.1 < lung + 0.1 < spine


def test_same_image_through_different_codecs_reads_the_same(shared_data):
    """RG2: JPEG lossless and JPEG-LS lossless are bit-identical, near-lossless and lossy close."""
    xray = shared_data / "dicom" / "xray" / "pylibjpeg-data"
    lossless = read_radiograph(xray / "RG2_JPLL.dcm")[::2, ::2]
    np.testing.assert_array_equal(read_radiograph(xray / "RG2_JLSL.dcm")[::2, ::2], lossless)
    for name in ("RG2_JLSN.dcm", "RG2_JPLY_fixed.dcm"):
        other = read_radiograph(xray / name)[::2, ::2]
        assert np.abs(other - lossless).mean() < 0.01, name
    rg3 = read_radiograph(xray / "RG3_J2KR.dcm")[::2, ::2]
    assert np.abs(read_radiograph(xray / "RG3_J2KI.dcm")[::2, ::2] - rg3).mean() < 0.01


def test_big_endian_twin_reads_like_rle_twin(shared_data):
    edge = shared_data / "dicom" / "edge_cases" / "dcmfx-pydicom"
    np.testing.assert_array_equal(
        read_radiograph(edge / "MR_small_bigendian.dcm"), read_radiograph(edge / "MR_small_RLE.dcm")
    )
