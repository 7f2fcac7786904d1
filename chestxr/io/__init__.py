"""Reading radiographs: one reader for DICOM, PNG and JPEG, and its MONAI transforms.

The MONAI transforms are imported on first use (PEP 562): importing MONAI takes seconds, and
``read_radiograph`` alone (CLI, DataLoader workers) does not need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chestxr.io.errors import RadiographReadError
from chestxr.io.reader import DEFAULT_MAX_PIXELS, read_header, read_radiograph

if TYPE_CHECKING:
    from chestxr.io.monai_loader import LoadRadiograph, LoadRadiographd

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "LoadRadiograph",
    "LoadRadiographd",
    "RadiographReadError",
    "read_header",
    "read_radiograph",
]

_LAZY = ("LoadRadiograph", "LoadRadiographd")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from chestxr.io import monai_loader

        return getattr(monai_loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
