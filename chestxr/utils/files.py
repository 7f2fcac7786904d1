"""Atomic file writes and fresh run folders: nothing already written is lost.

Every artefact chestxr writes (checkpoints, exports, manifests, CSV, JSON, PNG, HTML) goes
through :func:`atomic_write`: a temporary file in the target's folder, flushed to disk, then
renamed, so a reader (or a crash, or a full disk) never leaves half a file under the final name.
Permissions follow the umask, as for any file the user creates.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from chestxr.utils.jsonable import to_jsonable

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
        try:
            write(tmp)
            _fsync_file(tmp)
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OSError(
                    err.errno, f"disk full while writing {path}; nothing was written there"
                ) from err
            raise
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise FileExistsError(f"{path} already exists; refusing to overwrite it") from None
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Make a rename durable (best effort: some file systems refuse to fsync a folder)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes, *, overwrite: bool = False
) -> Path:
    """Write ``data`` to ``path`` atomically; see :func:`atomic_write`."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), overwrite=overwrite)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, overwrite: bool = False) -> Path:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def atomic_write_json(
    path: str | os.PathLike[str], obj: Any, *, overwrite: bool = False, sort_keys: bool = False
) -> Path:
    """JSON version of :func:`atomic_write_bytes`: indented, through :func:`to_jsonable`.

    Undefined numbers (NaN, inf) are written as ``null``; put the reason beside them.
    """
    text = json.dumps(to_jsonable(obj), indent=2, allow_nan=False, sort_keys=sort_keys)
    return atomic_write_text(path, text + "\n", overwrite=overwrite)


FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def neutralise_cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet will not run as a formula.

    Text starting with ``=``, ``+``, ``-``, ``@``, tab or carriage return gets a leading ``'``
    (OWASP's CSV-injection advice); numbers are left alone, so ``-0.5`` stays a number.
    """
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        try:
            float(value)
        except ValueError:
            return "'" + value
    return value


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """CSV text of ``header`` and ``rows``, every cell passed through :func:`neutralise_cell`."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([neutralise_cell(h) for h in header])
    for row in rows:
        writer.writerow([neutralise_cell(c) for c in row])
    return buf.getvalue()


def atomic_write_csv(
    path: str | os.PathLike[str],
    header: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    overwrite: bool = False,
) -> Path:
    """Write a CSV atomically, with spreadsheet formulas neutralised; see :func:`csv_text`."""
    return atomic_write_text(path, csv_text(header, rows), overwrite=overwrite)


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
