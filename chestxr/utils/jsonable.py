"""One converter from chestxr's results (numpy, torch, paths, NaN) to plain JSON values."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any


def to_jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON values.

    Mappings and sequences are converted item by item, numpy/torch scalars and arrays become
    numbers and lists, paths become strings, and undefined numbers (NaN, inf) become ``None``
    (``null``), since JSON has no NaN; a writer puts the reason beside such a value.

    Raises:
        TypeError: a value that has no JSON form (quoted in the message).
    """
    if obj is None or isinstance(obj, str | bool):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy / torch scalars and arrays
        return to_jsonable(obj.tolist())
    raise TypeError(f"value {obj!r} of type {type(obj).__name__} has no JSON form")
