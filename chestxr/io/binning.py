"""Pixel binning: k x k block means that shrink a large radiograph as it is windowed.

A 2000-pixel radiograph trained at 224 pixels is reduced ~9x on each side, so the reader bins it
(k x k block means, k chosen to stay at or above the network's size) before the resize. Binning
comes after the VOI, so intensities are those of windowing every pixel; for the linear windows
and min-max (all but SIGMOID windows and VOI LUT tables) :func:`bin_affine` fuses the two: clip to
the window in the modality values, bin, then map the small image to [0, 1], which equals the
mean of the windowed pixels since the map is affine. Every step after the clip works on ~1/k^2
of the pixels.
"""

from __future__ import annotations

import threading

import numpy as np

BIN_SIDES = ("longest", "shortest")


def bin_factor(shape: tuple[int, ...], target: int | None, side: str = "longest") -> int:
    """The largest k that keeps the chosen side of ``shape``, binned by k, at 2 x ``target``+.

    Twice the target, so that the area resize after the binning still averages 2-3 pixels per
    output pixel (a resize by a ratio near 1 would average 2 neighbours everywhere: a blur).

    Args:
        shape: ``(H, W)`` of the image.
        target: side the image will be resized to next; ``None`` or 0 turns binning off.
        side: ``longest`` (the image is fitted by its longest side, then padded) or ``shortest``
            (both sides are resized to ``target``).

    Returns:
        k >= 1 (1: no binning).

    Raises:
        ValueError: unknown ``side``.
    """
    if side not in BIN_SIDES:
        raise ValueError(f"bin_side must be one of {BIN_SIDES}, got {side!r}")
    if not target:
        return 1
    length = max(shape[-2:]) if side == "longest" else min(shape[-2:])
    return max(1, int(length) // (2 * int(target)))


def bin_mean(arr: np.ndarray, k: int) -> np.ndarray:
    """Mean of each k x k block; the last row and column of blocks average the pixels they have.

    Args:
        arr: 2-D array of numbers (not modified).
        k: block side (1 returns ``arr`` unchanged).

    Returns:
        float32 array ``(ceil(H / k), ceil(W / k))``, or ``arr`` itself when k is 1.
    """
    if k <= 1:
        return arr
    return _block_mean(np.asarray(arr, dtype=np.float32), k)


def bin_affine(arr: np.ndarray, k: int, lo: float, hi: float) -> np.ndarray:
    """``bin_mean((clip(arr, lo, hi) - lo) / (hi - lo), k)``, with the affine map after the binning.

    Args:
        arr: 2-D array of numbers (not modified).
        k: block side (1: no binning).
        lo: value mapped to 0 (and everything below it).
        hi: value mapped to 1 (and everything above it); must exceed ``lo``.

    Returns:
        float32 array ``(ceil(H / k), ceil(W / k))`` in [0, 1].

    Raises:
        ValueError: ``hi`` is not above ``lo``.
    """
    if not hi > lo:
        raise ValueError(f"empty range: lo={lo!r}, hi={hi!r}")
    arr = np.asarray(arr)
    lo32, hi32 = np.float32(lo), np.float32(hi)
    if k == 1:
        out = _clipped(arr, lo32, hi32, np.empty(arr.shape, np.float32))
    else:  # a band of rows at a time: the float copy stays in the CPU's cache (~2x faster)
        rows = max(1, _BAND // (k * arr.shape[1])) * k
        band = _scratch((min(rows, arr.shape[0]), arr.shape[1]))
        parts = [
            _block_mean(_clipped(arr[s : s + rows], lo32, hi32, band[: len(arr[s : s + rows])]), k)
            for s in range(0, arr.shape[0], rows)
        ]
        out = np.concatenate(parts) if len(parts) > 1 else parts[0]
    out -= lo32
    out *= np.float32(1.0 / (hi - lo))
    return np.clip(out, 0.0, 1.0, out=out)


_BAND = 1 << 18  # float32 values (1 MiB) per band of rows that bin_affine clips and bins


def _clipped(arr: np.ndarray, lo: np.float32, hi: np.float32, out: np.ndarray) -> np.ndarray:
    """``clip(arr, lo, hi)`` as float32 into ``out`` (one pass where ``arr`` casts safely)."""
    if np.can_cast(arr.dtype, np.float32):  # (u)int8/16, float16/32: clipped as converted
        return np.clip(arr, lo, hi, out=out)
    np.copyto(out, arr, casting="unsafe")
    return np.clip(out, lo, hi, out=out)


_local = threading.local()


def _scratch(shape: tuple[int, ...]) -> np.ndarray:
    """A float32 work array of ``shape``, reused by the next call in this thread.

    Allocating it afresh for each scan makes the kernel map and zero new pages every time, which
    costs as much as the arithmetic.
    """
    size = int(np.prod(shape))
    buf = getattr(_local, "buf", None)
    if buf is None or buf.size < size:
        buf = _local.buf = np.empty(size, np.float32)
    return buf[:size].reshape(shape)


def _block_mean(x: np.ndarray, k: int) -> np.ndarray:
    """k x k block means of a float32 2-D array, rows then columns (separable sums)."""
    return _axis_block_mean(_axis_block_mean(x, k, axis=0), k, axis=1)


def _axis_block_mean(x: np.ndarray, k: int, axis: int) -> np.ndarray:
    """Means of consecutive runs of k along ``axis`` (a shorter last run averages what it has)."""
    n = x.shape[axis]
    q, r = divmod(n, k)
    # k strided slices added up, in order (as a reduction over k would): numpy reduces a short
    # last axis, or the middle axis of (q, k, W), 2-3x slower than these whole-row additions
    if axis == 0:
        full = x[0 : q * k : k].copy()
        for i in range(1, k):
            full += x[i : q * k : k]
        rest = [x[q * k :].mean(axis=0, dtype=np.float32, keepdims=True)] if r else []
    else:
        full = x[:, 0 : q * k : k].copy()
        for i in range(1, k):
            full += x[:, i : q * k : k]
        rest = [x[:, q * k :].mean(axis=1, dtype=np.float32, keepdims=True)] if r else []
    full *= np.float32(1.0 / k)
    return np.ascontiguousarray(np.concatenate([full, *rest], axis=axis)) if rest else full
