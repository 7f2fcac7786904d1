"""MONAI transforms around :func:`chestxr.io.read_radiograph` (instead of MONAI's ``LoadImage``).

MONAI's ``LoadImage`` with the pydicom reader is ~5-15x slower here and applies no VOI or
MONOCHROME1 inversion; these transforms return plain numpy arrays with a channel axis.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from os import PathLike
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from chestxr.io.binning import BIN_SIDES
from chestxr.io.reader import DEFAULT_MAX_PIXELS, VOI_MODES, read_radiograph
from chestxr.keys import ORIG_SHAPE


class LoadRadiograph(Transform):
    """Load a radiograph file as a (1, H, W) float32 array in [0, 1].

    Args:
        frame: frame index for multi-frame files.
        max_pixels: decompression-bomb guard, see :func:`chestxr.io.read_radiograph`.
        voi: ``"header"`` or ``"minmax"``.
        bin_to: bin k x k pixel blocks down to no less than this side (see
            :func:`chestxr.io.read_radiograph`); None keeps every pixel.
        bin_side: ``longest`` or ``shortest``.

    Raises:
        ValueError: ``voi`` is not one of ``"header"``, ``"minmax"``.
    """

    def __init__(
        self,
        frame: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        voi: str = "header",
        bin_to: int | None = None,
        bin_side: str = "longest",
    ) -> None:
        if voi not in VOI_MODES:
            raise ValueError(f"voi must be one of {VOI_MODES}, got {voi!r}")
        if bin_side not in BIN_SIDES:
            raise ValueError(f"bin_side must be one of {BIN_SIDES}, got {bin_side!r}")
        self.frame = frame
        self.max_pixels = max_pixels
        self.voi = voi
        self.bin_to = bin_to
        self.bin_side = bin_side

    def __call__(self, path: str | PathLike[str]) -> np.ndarray:
        """Read ``path``.

        Args:
            path: a DICOM, PNG or JPEG file.

        Returns:
            float32 array (1, H, W).

        Raises:
            RadiographReadError: the file cannot be read.
        """
        arr = read_radiograph(
            path,
            frame=self.frame,
            max_pixels=self.max_pixels,
            voi=self.voi,
            bin_to=self.bin_to,
            bin_side=self.bin_side,
        )
        return arr[np.newaxis]


class LoadRadiographd(MapTransform):
    """Dictionary version of :class:`LoadRadiograph`.

    Replaces ``d[key]`` (a path) by the (1, H, W) array and sets ``d[chestxr.keys.ORIG_SHAPE]``
    to the (H, W) of the image as read, after any binning (of the last key read, when several
    are given).

    Args:
        keys: keys holding file paths.
        frame: frame index for multi-frame files.
        max_pixels: decompression-bomb guard.
        voi: ``"header"`` or ``"minmax"``.
        bin_to: see :class:`LoadRadiograph`.
        bin_side: see :class:`LoadRadiograph`.
        allow_missing_keys: do not raise when a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        frame: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        voi: str = "header",
        bin_to: int | None = None,
        bin_side: str = "longest",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadRadiograph(
            frame=frame, max_pixels=max_pixels, voi=voi, bin_to=bin_to, bin_side=bin_side
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Load every key.

        Args:
            data: sample dictionary with file paths under ``keys``.

        Returns:
            A new dictionary with arrays under ``keys`` and ``ORIG_SHAPE`` set.

        Raises:
            RadiographReadError: a file cannot be read.
            KeyError: a key is missing and ``allow_missing_keys`` is False.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            arr = self.loader(d[key])
            d[key] = arr
            d[ORIG_SHAPE] = (int(arr.shape[-2]), int(arr.shape[-1]))
        return d
