"""Fuzzing read_radiograph: mutated DICOM bytes give an image or a RadiographReadError, never
another exception.

Seeds are small real DICOM files from ../shared/data when present; without them (a user's clone)
the test writes its own: uncompressed MONOCHROME1 with a window, RLE, and ACR-NEMA (no preamble).
"""

from __future__ import annotations

import os
from copy import deepcopy
from datetime import timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.uid import RLELossless

from chestxr.io import RadiographReadError, read_radiograph
from tests.helpers import dicom

SHARED_SEEDS = (
    "xray/highdicom/dx_image.dcm",  # DX MONOCHROME1, explicit VR, window + INVERSE, 37 kB
    "edge_cases/dcmfx-pydicom/MR_small_RLE.dcm",  # RLE, signed 16-bit, 8 kB
    "edge_cases/dcmfx-pydicom/JPEGLSNearLossless_16.dcm",  # JPEG-LS, 738 bytes
)
HEADER_BYTES = 1024  # most mutations land here, where the structure is


def _written_seeds() -> list[bytes]:
    """Three small DICOM files made with pydicom: plain, RLE and ACR-NEMA."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 4096, size=(24, 20), dtype=np.uint16)
    ds = dicom.radiograph(
        pixels,
        photometric="MONOCHROME1",
        bits_stored=12,
        sop_uid="1.2.3.4",  # fixed: the seeds are the same bytes on every run
        RescaleSlope=1,
        RescaleIntercept=0,
        WindowCenter=[2048, 1000],
        WindowWidth=[4096, 500],
    )
    seeds = []
    for variant in ("plain", "rle", "acr-nema"):
        copy = deepcopy(ds)
        if variant == "rle":
            copy.compress(RLELossless, encoding_plugin="pydicom")
        buffer = pydicom.filebase.DicomBytesIO()
        if variant == "acr-nema":
            del copy.file_meta
            pydicom.dcmwrite(buffer, copy, implicit_vr=True, little_endian=True)
        else:
            pydicom.dcmwrite(buffer, copy, enforce_file_format=True)
        seeds.append(buffer.getvalue())
    return seeds


@pytest.fixture(scope="module")
def seeds(repo_root) -> list[bytes]:
    shared = Path(os.environ.get("CHESTXR_SHARED_DATA", repo_root.parent / "shared" / "data"))
    paths = [shared / "dicom" / name for name in SHARED_SEEDS]
    if all(p.is_file() for p in paths):
        return [p.read_bytes() for p in paths]
    return _written_seeds()


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "mutant.dcm"


@st.composite
def mutations(draw, size: int) -> list[tuple[str, int, bytes]]:
    """1-4 edits (kind, position, payload): byte flips, insertions, deletions, truncations."""
    position = st.one_of(st.integers(0, min(size, HEADER_BYTES) - 1), st.integers(0, size - 1))
    edit = st.one_of(
        st.tuples(st.just("flip"), position, st.binary(min_size=1, max_size=1)),
        st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("delete"), position, st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("truncate"), st.integers(0, size - 1), st.just(b"")),
    )
    return draw(st.lists(edit, min_size=1, max_size=4))


def mutate(data: bytes, edits: list[tuple[str, int, bytes]]) -> bytes:
    out = bytearray(data)
    for kind, pos, payload in edits:
        pos = min(pos, max(len(out) - 1, 0))
        if kind == "flip" and out:
            out[pos] ^= payload[0] or 0xFF
        elif kind == "insert":
            out[pos:pos] = payload
        elif kind == "delete":
            del out[pos : pos + len(payload)]  # as many bytes as the payload has
        elif kind == "truncate":
            del out[pos:]
    return bytes(out)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the broken headers
@settings(max_examples=60, deadline=timedelta(seconds=5))
@given(data=st.data())
def test_mutated_dicom_gives_image_or_read_error(seeds, target, data):
    seed = data.draw(st.sampled_from(range(len(seeds))), label="seed")
    edits = data.draw(mutations(len(seeds[seed])), label="edits")
    target.write_bytes(mutate(seeds[seed], edits))
    try:
        out = read_radiograph(target, max_pixels=4_000_000)
    except RadiographReadError as err:
        assert err.path == str(target)
        assert err.reason
        return
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.float32 and out.ndim == 2
    assert np.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_seeds_read_unmutated(seeds, target):
    for seed in seeds:
        target.write_bytes(seed)
        out = read_radiograph(target)
        assert out.ndim == 2 and out.max() > out.min()
