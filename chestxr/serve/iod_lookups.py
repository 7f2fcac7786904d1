"""highdicom's look-ups in the DICOM standard's IOD tables, memoized.

For every SR it builds, highdicom asks the standard's tables whether the SR's and the source's
IODs hold an attribute (``ContentDate``, ``PixelData``, ...), by a linear scan over every
attribute of every module of the IOD: ~3 ms of CPU per SR measured here, for answers that never
change (the tables are static data shipped with highdicom). :func:`install` puts memoized copies
of the two functions in place of the originals in every highdicom module that imported them; the
answers are the originals' (``tests/test_serve_results.py`` checks them over every IOD).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence

from highdicom import _standard_utils as standard

_is_attribute_in_iod = standard.is_attribute_in_iod
_does_iod_have_pixel_data = standard.does_iod_have_pixel_data


@functools.lru_cache(maxsize=4096)
def _in_iod(attribute: str, sop_class_uid: str, exclude: tuple[str, ...] | None) -> bool:
    return _is_attribute_in_iod(attribute, sop_class_uid, None if exclude is None else [*exclude])


def is_attribute_in_iod(
    attribute: str, sop_class_uid: str, exclude_path_elements: Sequence[str] | None = None
) -> bool:
    """highdicom's ``is_attribute_in_iod``, memoized (an unknown SOP class still raises)."""
    exclude = None if exclude_path_elements is None else tuple(exclude_path_elements)
    return _in_iod(str(attribute), str(sop_class_uid), exclude)


@functools.lru_cache(maxsize=1024)
def _has_pixel_data(sop_class_uid: str) -> bool:
    return _does_iod_have_pixel_data(sop_class_uid)


def does_iod_have_pixel_data(sop_class_uid: str) -> bool:
    """highdicom's ``does_iod_have_pixel_data``, memoized."""
    return _has_pixel_data(str(sop_class_uid))


_MEMOIZED: tuple[tuple[Callable, Callable], ...] = (
    (_is_attribute_in_iod, is_attribute_in_iod),
    (_does_iod_have_pixel_data, does_iod_have_pixel_data),
)


def install() -> list[str]:
    """Replace the two look-ups by their memoized copies wherever highdicom holds them.

    Returns:
        ``module.name`` of each replacement made (none on a second call).
    """
    replaced = []
    for module_name, module in list(sys.modules.items()):
        if module is None or module_name.partition(".")[0] != "highdicom":
            continue
        for name, value in list(vars(module).items()):
            for original, memoized in _MEMOIZED:
                if value is original:
                    setattr(module, name, memoized)
                    replaced.append(f"{module_name}.{name}")
    return replaced
