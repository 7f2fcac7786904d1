"""Pointing game, CAM-box IoU, box and map geometry, overlays, on hand-made arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from chestxr.explain import (
    blend_overlay,
    boxes_to_input,
    cam_box_iou,
    cam_peak,
    cam_to_original,
    overlay_figure,
    pointing_game,
)


def _blob(shape: tuple[int, int], row: float, col: float, sigma: float = 3.0) -> np.ndarray:
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    return np.exp(-((rr - row) ** 2 + (cc - col) ** 2) / (2 * sigma**2)).astype(np.float32)


def test_pointing_game_hits_and_misses() -> None:
    cam = _blob((40, 60), row=10, col=45)
    assert pointing_game(cam, [(40, 5, 50, 15)])  # x = column, y = row
    assert not pointing_game(cam, [(5, 40, 15, 50)])  # same box with x and y swapped
    assert pointing_game(cam, [(0, 0, 5, 5), (44, 9, 47, 12)])  # any box counts
    assert not pointing_game(cam, [(46, 11, 50, 15)])  # end-exclusive, peak at (10, 45)
    assert pointing_game(cam, [(46, 11, 50, 15)], tolerance=1)
    assert not pointing_game(cam, [])
    assert not pointing_game(np.zeros((8, 8)), [(0, 0, 8, 8)])  # a flat map points nowhere


def test_peak_of_an_upsampled_plateau_is_its_middle() -> None:
    coarse = torch.tensor([[[[1.0, 0.2], [0.1, 0.0]]]])
    cam = F.interpolate(coarse, size=(64, 64), mode="bilinear")[0, 0].numpy()
    assert np.argmax(cam) == 0  # numpy's argmax takes the plateau's corner
    row, col = cam_peak(cam)
    assert 5 <= row <= 10 and 5 <= col <= 10
    assert pointing_game(cam, [(4, 4, 12, 12)])


def test_cam_box_iou() -> None:
    cam = np.zeros((20, 20))
    cam[5:10, 5:10] = 1.0
    cam[0, 0] = 0.3  # below half the maximum
    assert cam_box_iou(cam, [(5, 5, 10, 10)]) == pytest.approx(1.0)
    assert cam_box_iou(cam, [(5, 5, 15, 10)]) == pytest.approx(0.5)
    assert cam_box_iou(cam, [(5, 5, 10, 10)], threshold=0.2) == pytest.approx(25 / 26)
    assert cam_box_iou(cam, [(15, 15, 20, 20)]) == 0.0
    assert cam_box_iou(np.zeros((5, 5)), [(0, 0, 5, 5)]) == 0.0
    with pytest.raises(ValueError, match="threshold"):
        cam_box_iou(cam, [(0, 0, 1, 1)], threshold=0.0)


def _geometry(orig: tuple[int, int], size: int) -> dict:
    scale = size / max(orig)
    h, w = round(orig[0] * scale), round(orig[1] * scale)
    return {
        "scale_y": scale,
        "scale_x": scale,
        "pad_top": (size - h) // 2,
        "pad_left": (size - w) // 2,
        "size": size,
    }


def _to_input(original: np.ndarray, geometry: dict) -> np.ndarray:
    """The preprocessing the lead's data module applies: resize keeping aspect, pad to square."""
    size = geometry["size"]
    h = round(original.shape[0] * geometry["scale_y"])
    w = round(original.shape[1] * geometry["scale_x"])
    small = F.interpolate(torch.from_numpy(original)[None, None], size=(h, w), mode="bilinear")
    out = np.zeros((size, size), dtype=np.float32)
    out[
        geometry["pad_top"] : geometry["pad_top"] + h,
        geometry["pad_left"] : geometry["pad_left"] + w,
    ] = small[0, 0]
    return out


@pytest.mark.parametrize("orig", [(300, 180), (180, 300), (200, 200)])
def test_cam_to_original_round_trip(orig: tuple[int, int]) -> None:
    peak = (0.7 * orig[0], 0.3 * orig[1])
    geometry = _geometry(orig, size=64)
    on_input = _to_input(_blob(orig, *peak, sigma=15), geometry)
    back = cam_to_original(on_input, orig, geometry)
    assert back.shape == orig
    row, col = np.unravel_index(np.argmax(back), orig)
    tol = 1.5 / geometry["scale_y"]  # a pixel of the input grid, in original pixels
    assert abs(row - peak[0]) <= tol and abs(col - peak[1]) <= tol
    # the boxes follow the same geometry
    ((bx0, by0, _, _),) = boxes_to_input([(peak[1], peak[0], peak[1] + 1, peak[0] + 1)], geometry)
    input_peak = np.unravel_index(np.argmax(on_input), on_input.shape)
    assert abs(input_peak[0] - by0) <= 1.5 and abs(input_peak[1] - bx0) <= 1.5


def test_cam_to_original_rejects_mismatched_geometry() -> None:
    geometry = _geometry((100, 50), size=32)
    with pytest.raises(ValueError, match="size"):
        cam_to_original(np.zeros((16, 16)), (100, 50), geometry)
    with pytest.raises(ValueError, match="lacks"):
        cam_to_original(np.zeros((32, 32)), (100, 50), {"size": 32})
    with pytest.raises(ValueError, match="fit"):
        cam_to_original(np.zeros((32, 32)), (400, 50), geometry)


def test_overlays_keep_the_aspect_ratio(tmp_path) -> None:
    image = np.random.default_rng(0).random((120, 60)).astype(np.float32)
    cam = _blob((120, 60), row=30, col=20, sigma=8)
    cam /= cam.max()
    tall = overlay_figure(
        image, cam, tmp_path / "a" / "tall.png", title="p=0.9 <b>", colorbar=False
    )
    wide = overlay_figure(image.T, cam.T, tmp_path / "wide.png", title="t", boxes=[(10, 5, 30, 20)])
    with Image.open(tall) as a, Image.open(wide) as b:
        assert a.format == "PNG" and a.height > 1.5 * a.width
        assert b.width > 1.3 * b.height
    rgb = blend_overlay(image, cam)
    assert rgb.shape == (120, 60, 3) and rgb.dtype == np.uint8
    assert rgb[30, 20, 0] > rgb[30, 20, 2]  # jet: hot (red) at the peak
    assert rgb[110, 50, 2] > rgb[110, 50, 0]  # cold (blue) far from it
    with pytest.raises(ValueError, match="cam_to_original"):
        overlay_figure(image, cam.T, tmp_path / "x.png", title="t")
