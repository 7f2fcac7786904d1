"""Atomic file writes and fresh run folders: nothing already written is lost."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

RUN_MARKERS = ("checkpoints", "metrics.json", "evaluation", "report", "predictions.csv")


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes, *, overwrite: bool = False
) -> Path:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
