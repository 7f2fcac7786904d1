"""Atomic file writes and fresh run folders: nothing already written is lost."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

RUN_MARKERS = ("checkpoints", "metrics.json", "evaluation", "report", "predictions.csv")


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[Path], None], *, overwrite: bool = False
) -> Path:
    """Call ``write(tmp_path)``, then move the result to ``path`` in one step.

    Readers never see half a file; with ``overwrite=False`` a hard link (which cannot replace a
    file) makes sure two writers cannot both succeed.

    Args:
        path: the final file; its parent folders are created.
        write: writes the whole content to the temporary path it is given.
        overwrite: replace an existing ``path``.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
                raise FileExistsError(f"{path} already exists; refusing to overwrite it") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes, *, overwrite: bool = False
) -> Path:
    """Write ``data`` to ``path`` atomically; see :func:`atomic_write`."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), overwrite=overwrite)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, overwrite: bool = False) -> Path:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, overwrite: bool = False) -> Path:
    """JSON version of :func:`atomic_write_bytes` (indented, NaN refused)."""
    return atomic_write_text(
        path, json.dumps(obj, indent=2, allow_nan=False) + "\n", overwrite=overwrite
    )


def ensure_fresh_run_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` for a new run, refusing one that already holds a run's outputs.

    Raises:
        FileExistsError: the folder holds checkpoints, metrics or a report of an earlier run.
    """
    path = Path(path)
    taken = [m for m in RUN_MARKERS if (path / m).exists()]
    if taken:
        raise FileExistsError(
            f"{path} already holds an earlier run's outputs ({', '.join(taken)}); choose another "
            "hydra.run.dir (or leave it to the default, a new time-stamped folder)"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path
