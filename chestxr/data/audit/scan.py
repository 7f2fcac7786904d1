"""Reading: one pass over the files, in worker processes (sha256, thumbnail hash, header,
image properties)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from typing import Any

import numpy as np
from PIL import Image

from chestxr.io import DEFAULT_MAX_PIXELS, RadiographReadError, read_header, read_radiograph

log = logging.getLogger(__name__)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def thumbnail_hash(image: np.ndarray, size: int = 16) -> np.ndarray:
    """Perceptual hash: area-resize to ``size`` x ``size``, subtract the mean, keep the sign bits.

    Args:
        image: 2-D grey image.
        size: thumbnail side; the hash has ``size * size`` bits.

    Returns:
        bool array of ``size * size`` bits (True where the thumbnail is above its mean).

    Raises:
        ValueError: ``size`` < 2 or ``image`` is not 2-D.
    """
    if size < 2:
        raise ValueError(f"thumbnail size must be >= 2, got {size!r}")
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}")
    thumb = np.asarray(Image.fromarray(image, mode="F").resize((size, size), Image.Resampling.BOX))
    return (thumb > thumb.mean()).reshape(-1)


def scan_file(
    path: str,
    *,
    thumbnail: int = 16,
    frame: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    voi: str = "header",
) -> dict[str, Any]:
    """Everything the audit needs from one file: sha256, header, thumbnail hash, or why not.

    Args:
        path: the image file.
        thumbnail: thumbnail side of the hash.
        frame, max_pixels, voi: as for :func:`chestxr.io.read_radiograph` (the training settings).

    Returns:
        ``path``, ``sha256`` (None when the file cannot be opened), ``header``
        (:func:`chestxr.io.read_header`), ``hash`` (packed bits, uint8) and ``error`` (the
        reader's reason, or None).
    """
    out: dict[str, Any] = {"path": path, "sha256": None, "header": None, "hash": None}
    out["error"] = None
    with contextlib.suppress(OSError):  # the reader says why below
        out["sha256"] = file_sha256(path)
    try:
        out["header"] = read_header(path)
        image = read_radiograph(path, frame=frame, max_pixels=max_pixels, voi=voi)
    except RadiographReadError as err:
        out["error"] = err.reason
        return out
    out["hash"] = np.packbits(thumbnail_hash(image, thumbnail))
    return out


def scan_files(paths: Sequence[str], *, workers: int = 2, **options: Any) -> list[dict[str, Any]]:
    """:func:`scan_file` over ``paths``, in ``workers`` processes (0 or 1: in this process).

    Args:
        paths: image files.
        workers: worker processes.
        **options: keyword arguments of :func:`scan_file`.

    Returns:
        One result per path, in order.
    """
    scan = partial(scan_file, **options)
    n = len(paths)
    step = max(50, n // 10)
    results: list[dict[str, Any]] = []

    def collect(it: Iterable[dict[str, Any]]) -> None:
        for result in it:
            results.append(result)
            if len(results) % step == 0 or len(results) == n:
                log.info("audit: read %d/%d files", len(results), n)

    if workers <= 1 or n < 2:
        collect(map(scan, paths))
        return results
    chunksize = max(1, min(64, n // (workers * 8)))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        collect(pool.map(scan, paths, chunksize=chunksize))
    return results
