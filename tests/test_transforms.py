"""chestxr's square resize equals MONAI's Resized + SpatialPadd chain number for number."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Compose, Resized, SpatialPadd

from chestxr.data.transforms import ResizeToSquared, geometry


def monai_chain(size: int, resize: str) -> Compose:
    """What ``preprocessing`` used before ResizeToSquared (MONAI's own transforms)."""
    if resize == "pad":
        return Compose(
            [
                Resized("image", size, size_mode="longest", mode="area"),
                SpatialPadd("image", (size, size), method="symmetric"),
            ]
        )
    return Compose([Resized("image", (size, size), mode="area")])


SHAPES = [(458, 470), (470, 458), (300, 301), (64, 64), (224, 224), (223, 97), (10, 3), (1, 1)]


@pytest.mark.parametrize("resize", ["pad", "stretch"])
@pytest.mark.parametrize("shape", SHAPES)
def test_resize_to_square_equals_monais_resize_and_pad(shape, resize):
    rng = np.random.default_rng(sum(shape))
    image = rng.random((1, *shape), dtype=np.float32)
    for size in (64, 224):
        expected = torch.as_tensor(monai_chain(size, resize)({"image": image})["image"])
        got = ResizeToSquared("image", size, resize)({"image": image})["image"]
        assert type(got) is torch.Tensor and got.dtype == torch.float32
        assert got.shape == expected.shape == (1, size, size)
        torch.testing.assert_close(got, expected.as_subclass(torch.Tensor), rtol=0, atol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_geometry_says_where_the_image_lands(shape):
    """The non-zero block of a resized-and-padded ones image is where ``geometry`` puts it."""
    size = 64
    got = ResizeToSquared("image", size, "pad").apply(np.ones((1, *shape), np.float32))[0]
    g = geometry(shape, size, "pad")
    h, w = round(shape[0] * g["scale_y"]), round(shape[1] * g["scale_x"])
    rows, cols = torch.nonzero(got > 0.5, as_tuple=True)
    assert (int(rows.min()), int(rows.max()) + 1) == (g["pad_top"], g["pad_top"] + h)
    assert (int(cols.min()), int(cols.max()) + 1) == (g["pad_left"], g["pad_left"] + w)


def test_unknown_resize_policy_is_named():
    with pytest.raises(ValueError, match="resize must be one of"):
        ResizeToSquared("image", 64, "crop")
