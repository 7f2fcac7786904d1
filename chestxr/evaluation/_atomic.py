"""Atomic file writes: write a temporary file beside the target, then ``os.replace`` it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def atomic_write(
    path: str | os.PathLike, write: Callable[[Path], None], overwrite: bool = True
) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` in one step.

    Args:
        path: the final file.
        write: writes the whole content to the temporary path it is given.
        overwrite: when False, fail instead of replacing an existing ``path`` (uses a hard link,
            which cannot overwrite, so two writers cannot both succeed).

    Returns:
        ``path`` as a Path.

    Raises:
        FileExistsError: ``overwrite`` is False and ``path`` exists.
    """
    path = Path(path)
    # A fresh unique name (not mkstemp, whose 0600 mode would ignore the umask).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise FileExistsError(f"refusing to overwrite existing {path}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, overwrite: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; see :func:`atomic_write`."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), overwrite)
