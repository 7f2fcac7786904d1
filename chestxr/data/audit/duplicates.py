"""Duplicates: groups of images whose thumbnail hashes lie within a few bits (union-find)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

_HASH_BLOCK = 1024  # hashes compared per block (bounds the memory of the pairwise distances)


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def hamming_groups(bits: np.ndarray, max_bits: int) -> list[list[int]]:
    """Groups of hashes linked by Hamming distance <= ``max_bits`` (transitively).

    Pigeonhole (multi-index hashing): split the bits into ``max_bits + 1`` interleaved parts; two
    hashes within ``max_bits`` agree exactly on at least one part, so only hashes sharing a part
    are compared. Near-linear unless many hashes share parts.

    Args:
        bits: ``(N, B)`` bool hashes.
        max_bits: largest distance that links two hashes (0: identical hashes only).

    Returns:
        Index lists (sorted) of the groups with two or more members.

    Raises:
        ValueError: ``max_bits`` negative or not below the hash length.
    """
    bits = np.asarray(bits, dtype=bool)
    n, length = bits.shape
    if not 0 <= max_bits < length:
        raise ValueError(f"max_bits must be in [0, {length}), got {max_bits!r}")
    # Identical hashes first, then distances between the distinct ones only.
    distinct, of_row = np.unique(bits, axis=0, return_inverse=True)
    of_row = of_row.reshape(-1)
    uf = _UnionFind(len(distinct))
    as_float = distinct.astype(np.float32)
    for part in range(max_bits + 1 if max_bits else 0):
        keys = np.packbits(distinct[:, part :: max_bits + 1], axis=1)
        _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
        order = np.argsort(inverse.reshape(-1), kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)])
        for g in np.flatnonzero(counts > 1):
            members = order[starts[g] : starts[g + 1]]
            sub = as_float[members]
            for lo in range(0, len(members), _HASH_BLOCK):
                block = sub[lo : lo + _HASH_BLOCK]
                # Hamming distance = a.(1-b) + (1-a).b, exact in float32 for B < 2**24
                dist = block @ (1.0 - sub).T + (1.0 - block) @ sub.T
                for i, j in zip(*np.nonzero(dist <= max_bits + 0.5), strict=True):
                    if lo + i < j:
                        uf.union(int(members[lo + i]), int(members[j]))
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(uf.find(int(of_row[i])), []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def exact_duplicates(
    rows: np.ndarray,
    row_scans: Sequence[dict[str, Any]],
    splits: np.ndarray,
    member: Callable[[int], dict[str, Any]],
) -> list[dict[str, Any]]:
    """Rows whose files have the same sha256, in groups of two or more.

    Args:
        rows: the manifest rows read.
        row_scans: their scans (``sha256`` None for an unreadable file).
        splits: every row's split.
        member: a row's description in the report.

    Returns:
        One ``{"sha256", "across_splits", "members"}`` per group.
    """
    by_sha: dict[str, list[int]] = {}
    for i, s in zip(rows, row_scans, strict=True):
        if s["sha256"] is not None:
            by_sha.setdefault(s["sha256"], []).append(int(i))
    return [
        {
            "sha256": sha,
            "across_splits": len({splits[i] for i in members}) > 1,
            "members": [member(i) for i in members],
        }
        for sha, members in by_sha.items()
        if len(members) > 1
    ]


def near_duplicates(
    rows: np.ndarray,
    row_scans: Sequence[dict[str, Any]],
    splits: np.ndarray,
    member: Callable[[int], dict[str, Any]],
    *,
    thumbnail: int,
    max_bits: int,
) -> list[dict[str, Any]]:
    """Rows whose thumbnail hashes lie within ``max_bits`` bits, over more than one distinct file.

    Args:
        rows: the manifest rows read.
        row_scans: their scans (``hash`` None for an unreadable file).
        splits: every row's split.
        member: a row's description in the report.
        thumbnail: side of the thumbnail hash (``thumbnail ** 2`` bits).
        max_bits: largest Hamming distance within a group.

    Returns:
        One ``{"max_hamming", "across_splits", "members"}`` per group (exact duplicates of one
        file are left to :func:`exact_duplicates`).
    """
    hashed = [(int(i), s) for i, s in zip(rows, row_scans, strict=True) if s["hash"] is not None]
    near: list[dict[str, Any]] = []
    if len(hashed) < 2:
        return near
    bits = np.unpackbits(np.stack([s["hash"] for _, s in hashed]), axis=1)
    bits = bits[:, : thumbnail * thumbnail].astype(bool)
    for group in hamming_groups(bits, max_bits):
        if len({hashed[g][1]["sha256"] for g in group}) < 2:
            continue  # one file (exact duplicates are reported above)
        members = [hashed[g][0] for g in group]
        near.append(
            {
                "max_hamming": _max_hamming(bits[group]),
                "across_splits": len({splits[i] for i in members}) > 1,
                "members": [member(i) for i in members],
            }
        )
    return near


def _max_hamming(bits: np.ndarray, limit: int = 2000) -> int | None:
    """Largest Hamming distance within a group (None past ``limit`` distinct hashes)."""
    u = np.unique(bits, axis=0).astype(np.float32)
    if len(u) > limit:
        return None
    return int((u @ (1.0 - u).T + (1.0 - u) @ u.T).max())
