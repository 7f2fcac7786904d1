"""Pixel binning in the reader: block means, the fused window, and the preprocessing chain."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.transforms import Compose
from PIL import Image

from chestxr import keys
from chestxr.data.transforms import preprocessing
from chestxr.io import read_radiograph
from chestxr.io.binning import bin_affine, bin_factor, bin_mean
from chestxr.io.dicom import window_to_unit
from tests.test_io_reader import lut_item, make_ds, write_dicom


def _pool(x: np.ndarray, k: int) -> np.ndarray:
    """Torch's k x k average pooling, last blocks averaging only the pixels they cover."""
    t = torch.from_numpy(np.asarray(x, dtype=np.float32))[None, None]
    return F.avg_pool2d(t, k, stride=k, ceil_mode=True)[0, 0].numpy()


@pytest.mark.parametrize("shape", [(16, 16), (10, 13), (7, 7), (5, 40), (41, 3)])
@pytest.mark.parametrize("k", [2, 3, 8])
def test_bin_mean_matches_torch_average_pooling(shape, k):
    x = np.random.default_rng(0).integers(0, 4096, size=shape).astype(np.uint16)
    np.testing.assert_allclose(bin_mean(x, k), _pool(x, k), rtol=1e-6, atol=1e-3)


def test_bin_factor_keeps_twice_the_target_on_the_chosen_side():
    assert bin_factor((2048, 1536), 224, "longest") == 4  # 512 >= 448, 5 would give 409
    assert bin_factor((2048, 1536), 224, "shortest") == 3  # 512 on the short side
    assert bin_factor((300, 200), 224) == 1
    assert bin_factor((4000, 4000), None) == 1
    with pytest.raises(ValueError, match="bin_side"):
        bin_factor((10, 10), 4, "middle")


@pytest.mark.parametrize("k", [1, 3, 4])
def test_fused_clip_bin_scale_equals_windowing_every_pixel_then_binning(k):
    """The fused path is exact: the window is affine between its clip points."""
    x = np.random.default_rng(1).integers(0, 4096, size=(37, 29)).astype(np.uint16)
    for center, width, function in [(1500.0, 2001.0, "LINEAR"), (900.5, 1200.0, "LINEAR_EXACT")]:
        lo = center - 0.5 - (width - 1) / 2 if function == "LINEAR" else center - width / 2
        hi = lo + (width - 1 if function == "LINEAR" else width)
        expected = bin_mean(window_to_unit(x, center, width, function), k)
        np.testing.assert_allclose(bin_affine(x, k, lo, hi), expected, atol=2e-6)
    with pytest.raises(ValueError, match="empty range"):
        bin_affine(x, 2, 5.0, 5.0)


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.int32, np.float64])
@pytest.mark.parametrize("band", [1, 40, 1 << 18])  # values per band: 1 row, a few rows, all
def test_binning_in_bands_of_rows_equals_torch_pooling_of_the_clipped_image(
    monkeypatch, dtype, band
):
    """bin_affine clips and bins a band of rows at a time; the bands (a remainder band with a
    partial block of rows included) and every pixel type give the pooled whole image."""
    from chestxr.io import binning

    monkeypatch.setattr(binning, "_BAND", band)
    x = np.random.default_rng(2).integers(-900, 4096, size=(23, 17)).astype(dtype)
    lo, hi = 100.5, 3000.25
    for k in (2, 3, 4):
        expected = (_pool(np.clip(x.astype(np.float64), lo, hi), k) - lo) / (hi - lo)
        np.testing.assert_allclose(bin_affine(x, k, lo, hi), expected, atol=2e-6)


@pytest.mark.parametrize(
    "elements",
    [
        {"WindowCenter": 1500, "WindowWidth": 2000},  # LINEAR, clipping both ends
        {"WindowCenter": 2000, "WindowWidth": 1000, "VOILUTFunction": "SIGMOID"},
        {"RescaleSlope": 2, "RescaleIntercept": -100, "WindowCenter": 3000, "WindowWidth": 4000},
        # the rescale folded into the window's bounds (stored units), clipping both ends
        {
            "RescaleSlope": 0.25,
            "RescaleIntercept": 1024.5,
            "WindowCenter": 1400,
            "WindowWidth": 500,
        },
        {"RescaleSlope": -1, "RescaleIntercept": 4095, "WindowCenter": 2000, "WindowWidth": 3000},
        {"RescaleSlope": 3, "RescaleIntercept": -50},  # min-max of rescaled values
        {},  # min-max
    ],
    ids=[
        "linear",
        "sigmoid",
        "rescale",
        "rescale-fraction",
        "negative-slope",
        "rescale-minmax",
        "minmax",
    ],
)
@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_binned_dicom_equals_the_full_image_binned(tmp_path, elements, photometric):
    pixels = np.random.default_rng(2).integers(0, 4096, size=(103, 77)).astype(np.uint16)
    path = write_dicom(make_ds(pixels, photometric=photometric, **elements), tmp_path / "b.dcm")
    full = read_radiograph(path)
    k = bin_factor(full.shape, 12, "longest")
    assert k == 4
    binned = read_radiograph(path, bin_to=12)
    assert binned.shape == (26, 20) and binned.dtype == np.float32
    np.testing.assert_allclose(binned, bin_mean(full, k), atol=2e-6)


def test_binned_voi_lut_and_png_equal_the_full_image_binned(tmp_path):
    pixels = np.random.default_rng(3).integers(0, 4096, size=(40, 50)).astype(np.uint16)
    lut = (20 + np.arange(4096) * 200 // 4095).astype(int)
    ds = make_ds(pixels, bits_stored=12, VOILUTSequence=[lut_item([4096, 0, 8], lut.tolist())])
    dcm = write_dicom(ds, tmp_path / "lut.dcm")
    png = tmp_path / "g.png"
    Image.fromarray((pixels // 16).astype(np.uint8)).save(png)
    for path in (dcm, png):
        for voi in ("header", "minmax"):
            full = read_radiograph(path, voi=voi)
            binned = read_radiograph(path, voi=voi, bin_to=5, bin_side="shortest")
            np.testing.assert_allclose(binned, bin_mean(full, 4), atol=2e-6)


def test_binned_preprocessing_is_close_to_the_full_resolution_chain(tmp_path):
    """Only the resampling differs (a box of k, then an area resize): a small mean difference."""
    yy, xx = np.mgrid[0:900, 0:700]
    smooth = 2000 + 1500 * np.sin(yy / 60.0) * np.cos(xx / 45.0)
    noise = np.random.default_rng(4).normal(0, 50, size=smooth.shape)
    pixels = np.clip(smooth + noise, 0, 4095).astype(np.uint16)
    ds = make_ds(pixels, photometric="MONOCHROME1", WindowCenter=2000, WindowWidth=2500)
    path = write_dicom(ds, tmp_path / "big.dcm")
    for resize in ("pad", "stretch"):
        out = {
            binning: Compose(preprocessing(64, resize=resize, binning=binning))(
                {keys.IMAGE: str(path)}
            )[keys.IMAGE]
            for binning in (True, False)
        }
        assert out[True].shape == out[False].shape == (1, 64, 64)
        diff = (out[True] - out[False]).abs()
        assert float(diff.mean()) < 0.01 and float(diff.max()) < 0.1


def test_binned_results_do_not_share_the_reused_work_array():
    rng = np.random.default_rng(5)
    a, b = (rng.integers(0, 4096, size=(64, 48)).astype(np.uint16) for _ in range(2))
    first = bin_affine(a, 4, 100.0, 3000.0)
    kept = first.copy()
    bin_affine(b, 4, 100.0, 3000.0)
    bin_affine(b[:40, :40], 3, 0.0, 4095.0)
    np.testing.assert_array_equal(first, kept)


def test_blank_image_keeps_its_binned_shape(tmp_path):
    pixels = np.full((103, 77), 700, dtype=np.uint16)
    path = write_dicom(make_ds(pixels, photometric="MONOCHROME1"), tmp_path / "blank.dcm")
    for voi in ("header", "minmax"):
        out = read_radiograph(path, voi=voi, bin_to=12)
        assert out.shape == (26, 20) and np.all(out == 1.0)  # MONOCHROME1: zeros inverted
