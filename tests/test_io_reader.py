"""chestxr.io on small files written here: DICOM display chain, PNG/JPEG, errors, MONAI loaders."""

from __future__ import annotations

import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_windowing, convert_color_space
from pydicom.pixels.decoders.base import Decoder
from pydicom.uid import (
    BasicTextSRStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from chestxr import keys
from chestxr.io import (
    DEFAULT_MAX_PIXELS,
    LoadRadiograph,
    LoadRadiographd,
    RadiographReadError,
    read_header,
    read_radiograph,
)
from chestxr.io.dicom import LUMA_WEIGHTS, window_to_unit
from tests.helpers import dicom

LUMA = np.asarray(LUMA_WEIGHTS)
HEADER_KEYS = {
    "format",
    "rows",
    "columns",
    "frames",
    "modality",
    "photometric",
    "transfer_syntax",
    "bits_stored",
    "view_position",
    "pixel_spacing",
    "manufacturer",
    "mode",
    "study_uid",
    "series_uid",
    "sop_uid",
}


def make_ds(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    **elements: object,
) -> Dataset:
    """A minimal DX-like dataset holding ``pixels`` (2-D, 3-D frames, or (H, W, 3) colour)."""
    patient = {"PatientName": "Doe^Jane", "PatientID": "P-123", "PatientBirthDate": "19700101"}
    return dicom.radiograph(
        pixels, photometric=photometric, bits_stored=bits_stored, **{**patient, **elements}
    )


def write_dicom(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def lut_item(descriptor: list[int], data: list[int], *, as_bytes: bool = False) -> Dataset:
    """A LUT item; LUT Data as US values, or as OW little-endian bytes."""
    item = Dataset()
    item.add_new(0x00283002, "US", descriptor)  # LUT Descriptor
    if as_bytes:
        item.add_new(0x00283006, "OW", struct.pack(f"<{len(data)}H", *data))
    else:
        item.add_new(0x00283006, "US", list(data))
    return item


def gradient(shape: tuple[int, int] = (8, 12), hi: int = 4000, dtype=np.uint16) -> np.ndarray:
    """A ramp from 0 to ``hi`` over the image, every value distinct."""
    return np.linspace(0, hi, shape[0] * shape[1]).round().astype(dtype).reshape(shape)


# --- DICOM display chain -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "window", [{}, {"WindowCenter": 1500, "WindowWidth": 2000}], ids=["minmax", "window"]
)
def test_monochrome1_and_monochrome2_twins_are_inverses(tmp_path, window):
    pixels = gradient()
    m1 = read_radiograph(
        write_dicom(make_ds(pixels, photometric="MONOCHROME1", **window), tmp_path / "m1.dcm")
    )
    m2 = read_radiograph(
        write_dicom(make_ds(pixels, photometric="MONOCHROME2", **window), tmp_path / "m2.dcm")
    )
    assert m1.dtype == m2.dtype == np.float32
    assert m1.shape == m2.shape == pixels.shape
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)
    assert m2[0, 0] < m2[-1, -1]  # MONOCHROME2: high stored value = bright
    assert m2.min() == 0.0 and m2.max() == 1.0


@pytest.mark.parametrize(
    ("photometric", "shape", "inverted"),
    [
        ("MONOCHROME2", "INVERSE", True),
        ("MONOCHROME2", "IDENTITY", False),
        ("MONOCHROME1", "INVERSE", True),  # the DX IOD pairs them: invert once, not twice
        ("MONOCHROME1", "IDENTITY", True),
    ],
)
def test_presentation_lut_shape(tmp_path, photometric, shape, inverted):
    pixels = gradient()
    plain = read_radiograph(write_dicom(make_ds(pixels), tmp_path / "plain.dcm"))
    ds = make_ds(pixels, photometric=photometric, PresentationLUTShape=shape)
    out = read_radiograph(write_dicom(ds, tmp_path / "shaped.dcm"))
    np.testing.assert_allclose(out, 1.0 - plain if inverted else plain, atol=1e-6)


def test_rescale_and_linear_window_hand_computed(tmp_path):
    pixels = np.array([[0, 100, 200, 300, 400]], dtype=np.uint16)
    # modality values 2 * p - 100 = -100, 100, 300, 500, 700
    # LINEAR window c=300.5, w=801: y = (x - 300) / 800 + 0.5, clipped to [0, 1]
    ds = make_ds(pixels, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=300.5, WindowWidth=801)
    out = read_radiograph(write_dicom(ds, tmp_path / "w.dcm"))
    np.testing.assert_allclose(out, [[0.0, 0.25, 0.5, 0.75, 1.0]], atol=1e-6)


def test_multiple_windows_use_the_first(tmp_path):
    pixels = np.array([[0, 100, 200, 300, 400]], dtype=np.uint16)
    one = make_ds(pixels, WindowCenter=200.5, WindowWidth=401)
    many = make_ds(pixels, WindowCenter=[200.5, 50], WindowWidth=[401, 10])
    second = make_ds(pixels, WindowCenter=50, WindowWidth=10)
    out_one = read_radiograph(write_dicom(one, tmp_path / "one.dcm"))
    out_many = read_radiograph(write_dicom(many, tmp_path / "many.dcm"))
    out_second = read_radiograph(write_dicom(second, tmp_path / "second.dcm"))
    np.testing.assert_allclose(out_one, [[0.0, 0.25, 0.5, 0.75, 1.0]], atol=1e-6)
    np.testing.assert_array_equal(out_many, out_one)
    assert not np.array_equal(out_second, out_one)


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_window_function_matches_pydicom_apply_windowing(function):
    """Same DICOM window functions as pydicom, only with output range [0, 1] instead of bits."""
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 4096, size=(32, 32)).astype(np.uint16)
    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelRepresentation = 0
    ds.BitsStored = 12
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 1800, 1500, function
    expected = apply_windowing(arr, ds) / 4095.0  # pydicom maps to [0, 2**12 - 1]
    np.testing.assert_allclose(window_to_unit(arr, 1800, 1500, function), expected, atol=1e-5)


def test_window_that_misses_the_pixel_data_falls_back_to_minmax(tmp_path):
    pixels = gradient(hi=3000) + 30000  # the window below lies outside every value
    ds = make_ds(pixels, WindowCenter=500, WindowWidth=200)
    out = read_radiograph(write_dicom(ds, tmp_path / "w.dcm"))
    expected = read_radiograph(tmp_path / "w.dcm", voi="minmax")
    assert out.max() == 1.0 and out.min() == 0.0
    np.testing.assert_array_equal(out, expected)


def test_voi_lut_sequence_with_8_bit_entries_beyond_256(tmp_path):
    """A 12-bit -> 8-bit VOI LUT (4096 entries; pydicom 3.0's apply_voi wraps indices >= 256)."""
    pixels = np.array([[0, 10, 300, 1000, 4095]], dtype=np.uint16)
    lut = (20 + np.arange(4096) * 200 // 4095).astype(int)  # output range 20..220
    item = lut_item([4096, 0, 8], lut.tolist())
    # the LUT wins over a window that is also present (pydicom's default preference)
    ds = make_ds(pixels, bits_stored=12, VOILUTSequence=[item], WindowCenter=5, WindowWidth=2)
    out = read_radiograph(write_dicom(ds, tmp_path / "voi.dcm"))
    expected = (lut[pixels] - 20) / 200.0
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_voi_lut_first_mapped_value_and_clipping(tmp_path):
    pixels = np.array([[0, 100, 101, 102, 103, 500]], dtype=np.uint16)
    # entries for 100..103; below -> first, above -> last
    item = lut_item([4, 100, 16], [1000, 2000, 3000, 5000], as_bytes=True)
    out = read_radiograph(write_dicom(make_ds(pixels, VOILUTSequence=[item]), tmp_path / "v.dcm"))
    np.testing.assert_allclose(out, [[0.0, 0.0, 0.25, 0.5, 1.0, 1.0]], atol=1e-6)


def test_modality_lut_sequence_then_window(tmp_path):
    pixels = np.array([[0, 1, 2, 3]], dtype=np.uint16)
    item = lut_item([4, 0, 16], [0, 400, 800, 1600], as_bytes=True)
    item.ModalityLUTType = "US"
    ds = make_ds(pixels, ModalityLUTSequence=[item], WindowCenter=800.5, WindowWidth=1601)
    out = read_radiograph(write_dicom(ds, tmp_path / "m.dcm"))
    np.testing.assert_allclose(out, [[0.0, 0.25, 0.5, 1.0]], atol=1e-6)


def test_empty_lut_sequences_are_ignored(tmp_path):
    pixels = gradient()
    ds = make_ds(pixels, ModalityLUTSequence=[Dataset()], VOILUTSequence=[Dataset()])
    out = read_radiograph(write_dicom(ds, tmp_path / "e.dcm"))
    np.testing.assert_allclose(out, pixels / pixels.max(), atol=1e-6)


def test_signed_pixels(tmp_path):
    pixels = np.array([[-1000, 0, 1000], [-500, 500, 250]], dtype=np.int16)
    out = read_radiograph(write_dicom(make_ds(pixels), tmp_path / "s.dcm"))
    np.testing.assert_allclose(out, (pixels + 1000) / 2000.0, atol=1e-6)
    # a window on signed modality values: c=0.5, w=1001 -> (x - 0) / 1000 + 0.5
    ds = make_ds(pixels, WindowCenter=0.5, WindowWidth=1001)
    out = read_radiograph(write_dicom(ds, tmp_path / "sw.dcm"))
    np.testing.assert_allclose(out, np.clip(pixels / 1000.0 + 0.5, 0, 1), atol=1e-6)


def test_signed_12_bits_in_16_allocated(tmp_path):
    # 12-bit two's complement words: 0x0800 = -2048, 0x0FFF = -1, 0x07FF = 2047; high bits junk
    words = np.array([[0x0800, 0xFFFF, 0x0000, 0x07FF]], dtype=np.uint16)
    ds = make_ds(words, bits_stored=12)
    ds.PixelRepresentation = 1
    out = read_radiograph(write_dicom(ds, tmp_path / "s12.dcm"))
    np.testing.assert_allclose(out, np.array([[0, 2047, 2048, 4095]]) / 4095.0, atol=1e-6)


def test_unsigned_12_bits_in_16_allocated_ignores_high_bits(tmp_path):
    values = np.array([[0, 1000, 2000, 4095]], dtype=np.uint16)
    junk = values | 0xF000  # bits above HighBit must be ignored
    ds = make_ds(junk, bits_stored=12, WindowCenter=2048, WindowWidth=4096)
    out = read_radiograph(write_dicom(ds, tmp_path / "u12.dcm"))
    expected = np.clip((values - 2047.5) / 4095.0 + 0.5, 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize(
    ("words", "bits_stored", "signed"),
    [
        ([[0, 1000, 4095, 17]], 12, 0),  # clean unsigned 12-bit: the view is used as it is
        ([[0xF000, 0x1234, 0xFFFF, 7]], 12, 0),  # junk above bit 11
        ([[0xF800, 0xFFFF, 0, 0x07FF]], 12, 1),  # signed, already sign-extended
        ([[0x0800, 0xFFFF, 0, 0x07FF]], 12, 1),  # signed, high bits not extended
        ([[0, 65535, 300, 40000]], 16, 0),
        ([[0x8000, 0x7FFF, 0xFFFF, 1]], 16, 1),
        ([[0, 255, 0x1FF, 0x300]], 8, 0),  # 8 bits stored in 16 allocated
    ],
)
def test_native_pixels_read_in_place_equal_pydicoms_corrected_array(
    tmp_path, words, bits_stored, signed
):
    """The reader takes a view of uncompressed grey pixels and clears unused high bits only when
    one is set: the stored values are those of pydicom's default (copying, correcting) decode."""
    from chestxr.io.dicom import _decode, read_dicom_dataset

    ds = make_ds(np.array(words, dtype=np.uint16), bits_stored=bits_stored)
    ds.PixelRepresentation = signed
    path = write_dicom(ds, tmp_path / "native.dcm")
    expected = pydicom.dcmread(path).pixel_array
    got, photometric = _decode(path, read_dicom_dataset(path), frame=None, max_pixels=10**6)
    assert photometric == "MONOCHROME2"
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
    assert read_radiograph(path).flags.writeable  # never a view of the file's bytes


def test_constant_image_gives_zeros(tmp_path):
    path = write_dicom(make_ds(np.full((4, 5), 777, dtype=np.uint16)), tmp_path / "c.dcm")
    for voi in ("header", "minmax"):
        out = read_radiograph(path, voi=voi)
        assert out.shape == (4, 5)
        np.testing.assert_array_equal(out, 0.0)


def test_voi_minmax_ignores_the_header_window(tmp_path):
    pixels = gradient()
    ds = make_ds(pixels, WindowCenter=100, WindowWidth=50)
    path = write_dicom(ds, tmp_path / "w.dcm")
    np.testing.assert_allclose(read_radiograph(path, voi="minmax"), pixels / 4000.0, atol=1e-6)
    assert (read_radiograph(path) == 1.0).mean() > 0.9  # the narrow window saturates


def test_multi_frame_needs_frame_and_selects_it(tmp_path):
    frames = np.stack([gradient(hi=1000 * (k + 1)) for k in range(3)])
    frames[1, -1, -1] = 4000  # frame 1: range 0..4000, not its neighbours' ramps
    path = write_dicom(make_ds(frames), tmp_path / "mf.dcm")
    with pytest.raises(RadiographReadError, match=r"3 frames.*frame=") as err:
        read_radiograph(path)
    assert "mf.dcm" in str(err.value)
    out = read_radiograph(path, frame=1)
    assert out.shape == frames.shape[1:]
    np.testing.assert_allclose(out, frames[1] / 4000.0, atol=1e-6)
    for bad in (3, -1):
        with pytest.raises(RadiographReadError, match="out of range"):
            read_radiograph(path, frame=bad)
    assert read_header(path)["frames"] == 3


def test_acr_nema_file_without_preamble_or_file_meta(tmp_path):
    pixels = gradient()
    ds = make_ds(pixels, WindowCenter=2000.5, WindowWidth=4001)
    reference = read_radiograph(write_dicom(ds, tmp_path / "part10.dcm"))
    del ds.file_meta
    path = tmp_path / "acr_nema.img"
    pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True)
    raw = path.read_bytes()
    assert raw[128:132] != b"DICM" and raw[:4] == b"\x08\x00\x16\x00"  # starts at (0008,0016)
    out = read_radiograph(path)
    np.testing.assert_array_equal(out, reference)
    header = read_header(path)
    assert header["format"] == "dicom"
    assert header["transfer_syntax"] == ImplicitVRLittleEndian


def test_rle_compressed_dicom(tmp_path):
    pixels = gradient()
    ds = make_ds(pixels)
    plain = read_radiograph(write_dicom(ds, tmp_path / "plain.dcm"))
    ds.compress(RLELossless, encoding_plugin="pydicom")
    out = read_radiograph(write_dicom(ds, tmp_path / "rle.dcm"))
    np.testing.assert_array_equal(out, plain)


def test_missing_decoder_names_transfer_syntax_and_extra(tmp_path, monkeypatch):
    ds = make_ds(gradient())
    ds.compress(RLELossless, encoding_plugin="pydicom")
    path = write_dicom(ds, tmp_path / "rle.dcm")
    monkeypatch.setattr(Decoder, "is_available", property(lambda self: False))
    with pytest.raises(RadiographReadError) as err:
        read_radiograph(path)
    message = str(err.value)
    assert "rle.dcm" in message
    assert "RLE Lossless" in message and RLELossless in message
    assert "pip install 'chestxr[dicom]'" in message


def test_rgb_and_ybr_dicom_fold_to_luma(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(6, 7, 3), dtype=np.uint8)
    out = read_radiograph(write_dicom(make_ds(rgb, photometric="RGB"), tmp_path / "rgb.dcm"))
    np.testing.assert_allclose(out, rgb @ LUMA / 255.0, atol=1e-5)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    out = read_radiograph(write_dicom(make_ds(ybr, photometric="YBR_FULL"), tmp_path / "y.dcm"))
    np.testing.assert_allclose(out, rgb @ LUMA / 255.0, atol=2.5 / 255)  # 8-bit round trip


def test_palette_colour_dicom(tmp_path):
    index = np.array([[0, 1, 2], [3, 2, 1]], dtype=np.uint8)
    red, green, blue = [0, 65535, 0, 30000], [0, 0, 65535, 30000], [0, 0, 0, 30000]
    ds = make_ds(index, photometric="PALETTE COLOR")
    for colour, lut in (("Red", red), ("Green", green), ("Blue", blue)):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [4, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", struct.pack("<4H", *lut))
    out = read_radiograph(write_dicom(ds, tmp_path / "pal.dcm"))
    rgb = np.stack([np.take(red, index), np.take(green, index), np.take(blue, index)], axis=-1)
    np.testing.assert_allclose(out, rgb @ LUMA / 65535.0, atol=1e-5)


def test_unsupported_photometric(tmp_path):
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    ds = make_ds(rgb, photometric="RGB")
    ds.PhotometricInterpretation = "HSV"
    with pytest.raises(RadiographReadError, match="HSV"):
        read_radiograph(write_dicom(ds, tmp_path / "hsv.dcm"))


# --- PNG and JPEG ------------------------------------------------------------------------------


def test_png_8_and_16_bit_grey(tmp_path):
    grey8 = gradient(hi=255, dtype=np.uint8)
    Image.fromarray(grey8).save(tmp_path / "g8.png")
    np.testing.assert_allclose(read_radiograph(tmp_path / "g8.png"), grey8 / 255.0, atol=1e-6)
    grey16 = gradient(hi=65535)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = read_radiograph(tmp_path / "g16.png")
    np.testing.assert_allclose(out, grey16 / 65535.0, atol=1e-6)
    assert read_header(tmp_path / "g16.png")["bits_stored"] == 16


def test_png_colour_modes_fold_to_luma_and_drop_alpha(tmp_path):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, size=(5, 6, 3), dtype=np.uint8)
    expected = rgb @ LUMA / 255.0
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    rgba = np.concatenate([rgb, rng.integers(0, 256, size=(5, 6, 1), dtype=np.uint8)], -1)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    la = np.stack([rgb[..., 0], rgb[..., 1]], axis=-1)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    palette = Image.fromarray(rgb).quantize(colors=16)
    palette.save(tmp_path / "p.png")
    np.testing.assert_allclose(read_radiograph(tmp_path / "rgb.png"), expected, atol=1e-5)
    np.testing.assert_allclose(read_radiograph(tmp_path / "rgba.png"), expected, atol=1e-5)
    np.testing.assert_allclose(read_radiograph(tmp_path / "la.png"), rgb[..., 0] / 255, atol=1e-6)
    palette_rgb = np.asarray(palette.convert("RGB"))
    out = read_radiograph(tmp_path / "p.png")
    np.testing.assert_allclose(out, palette_rgb @ LUMA / 255.0, atol=1e-5)
    assert read_header(tmp_path / "p.png")["mode"] == "P"


def test_jpeg_grey_and_rgb(tmp_path):
    grey = np.tile(np.linspace(0, 255, 64).round().astype(np.uint8), (48, 1))
    Image.fromarray(grey).save(tmp_path / "g.jpg", quality=95)
    out = read_radiograph(tmp_path / "g.jpg")
    assert out.shape == (48, 64) and out.dtype == np.float32
    np.testing.assert_allclose(out, grey / 255.0, atol=0.03)
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / "rgb.jpeg", quality=95)
    np.testing.assert_allclose(read_radiograph(tmp_path / "rgb.jpeg"), grey / 255.0, atol=0.03)
    header = read_header(tmp_path / "rgb.jpeg")
    assert header["format"] == "jpeg" and header["mode"] == "RGB"
    assert (header["rows"], header["columns"]) == (48, 64)


def test_format_is_detected_by_content_not_extension(tmp_path):
    grey = gradient(hi=255, dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "png_really.png")
    (tmp_path / "looks_like.dcm").write_bytes((tmp_path / "png_really.png").read_bytes())
    np.testing.assert_allclose(read_radiograph(tmp_path / "looks_like.dcm"), grey / 255, atol=1e-6)
    assert read_header(tmp_path / "looks_like.dcm")["format"] == "png"
    dcm = write_dicom(make_ds(gradient()), tmp_path / "a.dcm")
    (tmp_path / "dicom_really.png").write_bytes(dcm.read_bytes())
    assert read_radiograph(tmp_path / "dicom_really.png").shape == (8, 12)


def test_voi_minmax_on_png(tmp_path):
    grey = np.full((4, 4), 100, dtype=np.uint8)
    grey[0, 0], grey[3, 3] = 50, 150
    Image.fromarray(grey).save(tmp_path / "g.png")
    out = read_radiograph(tmp_path / "g.png", voi="minmax")
    np.testing.assert_allclose(out, (grey - 50) / 100.0, atol=1e-6)


# --- guards and errors -------------------------------------------------------------------------


def test_max_pixels_guard_dicom_and_png(tmp_path):
    dcm = write_dicom(make_ds(gradient((10, 10))), tmp_path / "a.dcm")
    Image.fromarray(gradient((10, 10), hi=255, dtype=np.uint8)).save(tmp_path / "a.png")
    for path in (dcm, tmp_path / "a.png"):
        assert read_radiograph(path, max_pixels=100).shape == (10, 10)
        with pytest.raises(RadiographReadError, match="max_pixels=99") as err:
            read_radiograph(path, max_pixels=99)
        assert path.name in str(err.value)
    assert DEFAULT_MAX_PIXELS == 100_000_000


def test_max_pixels_guard_runs_before_decoding(tmp_path):
    """A header claiming 60000 x 60000 pixels over 8 bytes of data: refused as too large."""
    ds = make_ds(np.zeros((2, 2), dtype=np.uint16))
    ds.Rows = ds.Columns = 60000
    with pytest.raises(RadiographReadError, match="too large"):
        read_radiograph(write_dicom(ds, tmp_path / "bomb.dcm"))


def _png_claiming_size(path: Path, width: int, height: int) -> Path:
    """A 1x1 PNG whose IHDR claims ``width`` x ``height`` (CRC fixed)."""
    Image.fromarray(np.zeros((1, 1), dtype=np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = 8 + 8  # signature, then length + b"IHDR"
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))
    return path


def test_pillow_decompression_bomb_becomes_read_error(tmp_path):
    path = _png_claiming_size(tmp_path / "bomb.png", 50_000, 50_000)
    with pytest.raises(RadiographReadError, match="too large") as err:
        read_radiograph(path)  # our guard (max_pixels)
    assert "bomb.png" in str(err.value)
    with pytest.raises(RadiographReadError, match="decompression-bomb"):
        read_radiograph(path, max_pixels=10**12)  # Pillow's own guard
    # a claimed size under both guards: the pixels are simply missing
    with pytest.raises(RadiographReadError):
        read_radiograph(_png_claiming_size(tmp_path / "liar.png", 300, 300))


def test_unreadable_files_raise_read_error_naming_the_file(tmp_path):
    dcm = write_dicom(make_ds(gradient((64, 64))), tmp_path / "whole.dcm")
    cases = {
        "missing.dcm": None,
        "empty.dcm": b"",
        "notes.txt": b"patient notes, not an image\n" * 20,
        "truncated.dcm": dcm.read_bytes()[: len(dcm.read_bytes()) // 2],
        "header_only.dcm": dcm.read_bytes()[:200],
        "random.bin": np.random.default_rng(3).bytes(4000),
    }
    Image.fromarray(gradient((64, 64), hi=255, dtype=np.uint8)).save(tmp_path / "whole.png")
    cases["truncated.png"] = (tmp_path / "whole.png").read_bytes()[:120]
    for name, content in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(RadiographReadError) as err:
            read_radiograph(path)
        assert name in str(err.value), str(err.value)
        assert err.value.path == str(path)
        assert err.value.reason
    with pytest.raises(RadiographReadError, match="file not found"):
        read_radiograph(tmp_path / "missing.dcm")
    with pytest.raises(RadiographReadError, match="empty"):
        read_radiograph(tmp_path / "empty.dcm")
    with pytest.raises(RadiographReadError, match="directory"):
        read_radiograph(tmp_path)
    with pytest.raises(RadiographReadError):
        read_header(tmp_path / "notes.txt")


def test_dicom_without_image_says_so(tmp_path):
    ds = make_ds(gradient())
    del ds.PixelData, ds.Rows, ds.Columns
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = BasicTextSRStorage
    with pytest.raises(RadiographReadError, match=r"without an image.*Basic Text SR"):
        read_radiograph(write_dicom(ds, tmp_path / "report.dcm"))


def test_read_error_pickles(tmp_path):
    with pytest.raises(RadiographReadError) as err:
        read_radiograph(tmp_path / "nope.png")
    clone = pickle.loads(pickle.dumps(err.value))
    assert type(clone) is RadiographReadError
    assert (clone.path, clone.reason, str(clone)) == (
        err.value.path,
        err.value.reason,
        str(err.value),
    )


def test_bad_arguments_are_value_errors(tmp_path):
    path = write_dicom(make_ds(gradient()), tmp_path / "a.dcm")
    with pytest.raises(ValueError, match="'window'"):
        read_radiograph(path, voi="window")
    with pytest.raises(ValueError, match="max_pixels"):
        read_radiograph(path, max_pixels=0)
    with pytest.raises(ValueError, match="voi"):
        LoadRadiograph(voi="auto")


# --- header ------------------------------------------------------------------------------------


def test_read_header_dicom_has_no_patient_identity_and_skips_pixels(tmp_path):
    ds = make_ds(
        gradient((20, 30)),
        photometric="MONOCHROME1",
        bits_stored=12,
        ViewPosition="PA",
        Manufacturer="Acme",
        ImagerPixelSpacing=[0.15, 0.2],
        StudyInstanceUID="1.2.3",
        SeriesInstanceUID="1.2.3.4",
        SOPInstanceUID="1.2.3.4.5",  # a random one may hold "1970" (it did, once in CI)
    )
    dcm = write_dicom(ds, tmp_path / "h.dcm")
    # cut into the pixel data: a header read must still work (it never decodes pixels)
    (tmp_path / "cut.dcm").write_bytes(dcm.read_bytes()[:-500])
    header = read_header(tmp_path / "cut.dcm")
    assert set(header) == HEADER_KEYS
    assert header == {
        "format": "dicom",
        "rows": 20,
        "columns": 30,
        "frames": 1,
        "modality": "DX",
        "photometric": "MONOCHROME1",
        "transfer_syntax": ExplicitVRLittleEndian,
        "bits_stored": 12,
        "view_position": "PA",
        "pixel_spacing": (0.15, 0.2),
        "manufacturer": "Acme",
        "mode": None,
        "study_uid": "1.2.3",
        "series_uid": "1.2.3.4",
        "sop_uid": "1.2.3.4.5",
    }
    text = repr(header)
    assert "Doe" not in text and "P-123" not in text and "1970" not in text


def test_read_header_png(tmp_path):
    Image.fromarray(np.zeros((7, 9, 4), dtype=np.uint8)).save(tmp_path / "a.png")
    header = read_header(tmp_path / "a.png")
    assert set(header) == HEADER_KEYS
    assert header["format"] == "png" and header["mode"] == "RGBA"
    assert (header["rows"], header["columns"], header["frames"]) == (7, 9, 1)
    assert header["photometric"] is None and header["sop_uid"] is None


# --- MONAI transforms --------------------------------------------------------------------------


def test_load_radiographd_shape_dtype_and_orig_shape(tmp_path):
    pixels = gradient((10, 14))
    dcm = write_dicom(make_ds(pixels, photometric="MONOCHROME1"), tmp_path / "a.dcm")
    sample = {keys.IMAGE: str(dcm), keys.TARGET: [1.0]}
    out = LoadRadiographd(keys=keys.IMAGE)(sample)
    assert sample[keys.IMAGE] == str(dcm)  # input dict untouched
    image = out[keys.IMAGE]
    assert isinstance(image, np.ndarray) and image.dtype == np.float32
    assert image.shape == (1, 10, 14)
    assert out[keys.ORIG_SHAPE] == (10, 14)
    assert out[keys.TARGET] == [1.0]
    np.testing.assert_allclose(image[0], 1.0 - pixels / 4000.0, atol=1e-6)
    np.testing.assert_array_equal(LoadRadiograph()(dcm), image)
    with pytest.raises(KeyError):
        LoadRadiographd(keys="other")(sample)
    skipped = LoadRadiographd(keys="other", allow_missing_keys=True)(sample)
    assert skipped == sample and keys.ORIG_SHAPE not in skipped


def test_load_radiographd_frame_and_errors(tmp_path):
    frames = np.stack([gradient(hi=100), gradient(hi=200)])
    dcm = write_dicom(make_ds(frames), tmp_path / "mf.dcm")
    out = LoadRadiographd(keys=keys.IMAGE, frame=1, voi="minmax")({keys.IMAGE: dcm})
    assert out[keys.IMAGE].shape == (1, *frames.shape[1:])
    with pytest.raises(RadiographReadError, match=r"mf\.dcm"):
        LoadRadiographd(keys=keys.IMAGE)({keys.IMAGE: dcm})
