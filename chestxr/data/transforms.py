"""MONAI transform chains: deterministic preprocessing (cacheable) and where it puts the image.

Preprocessing decodes the radiograph with chestxr's reader (``LoadRadiographd``), then either keeps
the aspect ratio (resize the longest side, pad to a square: ``resize="pad"``) or stretches to the
square (``resize="stretch"``). Intensities stay in [0, 1] as the reader gives them; the network
normalises them itself with the statistics of its weights. Train-time augmentation is applied to
whole batches on their device: :mod:`chestxr.data.batch_augment`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Compose, EnsureTyped, MapTransform, Transform

from chestxr import keys
from chestxr.io import DEFAULT_MAX_PIXELS, LoadRadiographd

RESIZE_POLICIES = ("pad", "stretch")


def preprocessing(
    image_size: int,
    resize: str = "pad",
    frame: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    voi: str = "header",
    binning: bool = True,
) -> list[Transform]:
    """Deterministic transforms from a file path to a ``(1, S, S)`` float32 tensor in [0, 1].

    Args:
        image_size: side S of the square network input.
        resize: ``pad`` (keep aspect, pad to square) or ``stretch`` (plain resize to S x S).
        frame: frame to take from multi-frame files (None: such files are an error).
        max_pixels: decompression-bomb guard passed to the reader.
        voi: reader's VOI policy (``header`` or ``minmax``).
        binning: let the reader average k x k pixel blocks before windowing, with the largest k
            that keeps the side being resized at ``image_size`` or more (:mod:`chestxr.io.binning`);
            the area resize then works on a small image. False windows every original pixel.

    Raises:
        ValueError: unknown resize policy or a non-positive size.
    """
    if resize not in RESIZE_POLICIES:
        raise ValueError(f"resize must be one of {RESIZE_POLICIES}, got {resize!r}")
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    load = LoadRadiographd(
        keys.IMAGE,
        frame=frame,
        max_pixels=max_pixels,
        voi=voi,
        bin_to=image_size if binning else None,
        bin_side="longest" if resize == "pad" else "shortest",
    )
    spatial = ResizeToSquared(keys.IMAGE, image_size, resize)
    tensors = EnsureTyped(
        [keys.IMAGE, keys.TARGET], dtype=np.float32, track_meta=False, allow_missing_keys=True
    )
    return [load, spatial, tensors]


class ResizeToSquared(MapTransform):
    """The image ``(1, H, W)`` to ``(1, S, S)``: ``pad`` resizes the longest side to S (area
    interpolation) and pads the other symmetrically with zeros; ``stretch`` resizes both sides.

    The same numbers as MONAI's ``Resized(S, size_mode="longest", mode="area")`` then
    ``SpatialPadd((S, S), method="symmetric")`` (or ``Resized((S, S), mode="area")``), computed
    on plain tensors: MONAI's MetaTensor bookkeeping cost as much as the interpolation itself,
    on the thread that reads scans while the network runs. A test holds the two equal.
    """

    def __init__(self, keys: str | Sequence[str], size: int, resize: str = "pad") -> None:
        super().__init__(keys)
        if resize not in RESIZE_POLICIES:
            raise ValueError(f"resize must be one of {RESIZE_POLICIES}, got {resize!r}")
        self.size, self.resize = int(size), resize

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.apply(d[key])
        return d

    def apply(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """One channel-first 2-D image to a float32 ``(C, S, S)`` tensor."""
        img = torch.as_tensor(image).float()
        h, w = img.shape[-2:]
        if self.resize == "stretch":
            out_size = (self.size, self.size)
        else:  # as MONAI rounds the longest-side scale
            scale = self.size / max(h, w)
            out_size = (round(h * scale), round(w * scale))
        if out_size != (h, w):
            img = F.interpolate(img[None], size=out_size, mode="area")[0]
        dh, dw = self.size - out_size[0], self.size - out_size[1]
        if dh or dw:  # symmetric: the odd pixel goes after the image, as in MONAI
            img = F.pad(img, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))
        return img.contiguous()


def geometry(orig_shape: Sequence[int], image_size: int, resize: str = "pad") -> dict[str, float]:
    """Where an original ``(H, W)`` image lands in the square input, as ``preprocessing`` puts it.

    Returns:
        ``scale_y``, ``scale_x`` (input pixels per original pixel), ``pad_top``, ``pad_left`` and
        ``size``: original ``(y, x)`` maps to ``(y * scale_y + pad_top, x * scale_x + pad_left)``.
    """
    h, w = (int(v) for v in orig_shape)
    if resize == "stretch":
        return {
            "scale_y": image_size / h,
            "scale_x": image_size / w,
            "pad_top": 0,
            "pad_left": 0,
            "size": image_size,
        }
    s = image_size / max(h, w)
    nh, nw = round(h * s), round(w * s)
    return {
        "scale_y": nh / h,
        "scale_x": nw / w,
        "pad_top": (image_size - nh) // 2,
        "pad_left": (image_size - nw) // 2,
        "size": image_size,
    }


def compose(transforms: Sequence[Transform]) -> Compose:
    """MONAI ``Compose`` that maps whole dictionaries (no per-key unpacking)."""
    return Compose(list(transforms))
