"""highdicom's look-ups in the DICOM standard's IOD tables, memoized.

For every SR it builds, highdicom asks the standard's tables whether the SR's and the source's
IODs hold an attribute (``ContentDate``, ``PixelData``, ...), by a linear scan over every
attribute of every module of the IOD: ~1.3 ms of CPU per SR measured here, for answers that never
change (the tables are static data shipped with highdicom). :func:`install` puts memoized copies
of the two functions in place of the originals in every highdicom module that holds them; the
answers are the originals' (``tests/test_serve_results.py`` checks them over every IOD). Calls
with arguments other than the ones highdicom makes (a UID string, no exclusions or a list of
keywords) go to the original unchanged. With a highdicom that keeps these functions elsewhere
(before 0.28), nothing is replaced.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

try:
    from highdicom import _standard_utils as standard
except ImportError:  # highdicom < 0.28: the look-ups live elsewhere; left as they are
    standard = None

_is_attribute_in_iod: Callable | None = getattr(standard, "is_attribute_in_iod", None)
_does_iod_have_pixel_data: Callable | None = getattr(standard, "does_iod_have_pixel_data", None)


@functools.lru_cache(maxsize=4096)
def _in_iod(attribute: str, sop_class_uid: str, exclude: tuple[str, ...] | None) -> bool:
    if exclude is None:
        return _is_attribute_in_iod(attribute, sop_class_uid)
    return _is_attribute_in_iod(attribute, sop_class_uid, [*exclude])


def _keywords(values: Sequence[str] | None) -> bool:
    return values is None or (
        isinstance(values, list | tuple) and all(isinstance(v, str) for v in values)
    )


def is_attribute_in_iod(
    attribute: str, sop_class_uid: str, exclude_path_elements: Sequence[str] | None = None
) -> bool:
    """highdicom's ``is_attribute_in_iod``, memoized (an unknown SOP class still raises)."""
    if not (
        isinstance(attribute, str)
        and isinstance(sop_class_uid, str)
        and _keywords(exclude_path_elements)
    ):
        if exclude_path_elements is None:
            return _is_attribute_in_iod(attribute, sop_class_uid)
        return _is_attribute_in_iod(attribute, sop_class_uid, exclude_path_elements)
    exclude = None if exclude_path_elements is None else tuple(exclude_path_elements)
    return _in_iod(attribute, sop_class_uid, exclude)


@functools.lru_cache(maxsize=1024)
def _has_pixel_data(sop_class_uid: str) -> bool:
    return _does_iod_have_pixel_data(sop_class_uid)


def does_iod_have_pixel_data(sop_class_uid: str) -> bool:
    """highdicom's ``does_iod_have_pixel_data``, memoized."""
    if not isinstance(sop_class_uid, str):
        return _does_iod_have_pixel_data(sop_class_uid)
    return _has_pixel_data(sop_class_uid)


def install() -> list[str]:
    """Replace the two look-ups by their memoized copies wherever highdicom holds them.

    Returns:
        ``module.name`` of each replacement made (none on a second call, or with a highdicom
        that has no ``_standard_utils``).
    """
    if _is_attribute_in_iod is None or _does_iod_have_pixel_data is None:
        log.debug("highdicom without _standard_utils: its IOD look-ups are not memoized")
        return []
    memoized = (
        (_is_attribute_in_iod, is_attribute_in_iod),
        (_does_iod_have_pixel_data, does_iod_have_pixel_data),
    )
    replaced = []
    for module_name, module in list(sys.modules.items()):
        if module is None or module_name.partition(".")[0] != "highdicom":
            continue
        for name, value in list(vars(module).items()):
            for original, copy in memoized:
                if value is original:
                    setattr(module, name, copy)
                    replaced.append(f"{module_name}.{name}")
    return replaced
