"""Loading user-supplied ``torch.save`` files without ever unpickling arbitrary objects."""

from __future__ import annotations

import os
import pickle
from typing import Any

import torch


def refused_message(path: str | os.PathLike[str]) -> str:
    """What chestxr says about a file that ``torch.load(weights_only=True)`` refused."""
    return (
        f"refusing to load {path}: it holds objects other than tensors and plain containers "
        "(not a chestxr checkpoint or weights file, or tampered with); chestxr never unpickles "
        "such files"
    )


def load_tensors_only(path: str | os.PathLike[str], *, map_location: Any = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True`` passed explicitly, so that the environment
    variable ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` cannot turn it off.

    Raises:
        ValueError: the file holds other objects (:func:`refused_message`); torch's advice to
            load it with ``weights_only=False`` is not passed on.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(refused_message(path)) from None
