"""Durable intake: every received instance is on disk before its C-STORE is answered.

Layout under the spool folder::

    pending/<key>.dcm   received, not yet scored (written atomically, fsynced)
    done/<key>.json     scored: the result record
    failed/<key>.json   not scored: the reason

``key`` is a SHA-256 of the SOP Instance UID, so a second send of the same instance is recognised
(and makes no second result) whatever state the first one is in, and no UID appears in file names.
A restart finds whatever is still in ``pending/`` and scores it.

The spool keeps its own queue of the pending instances it knows of, so taking the next batch
costs the same with ten thousand waiting (instances sent faster than they are scored: a night's
studies forwarded at once, a restart after the node was down) as with ten; ``pending/`` is read
again only when that queue is empty (at start, and to find files put there by hand or by
another process).
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chestxr.utils.files import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)
STATES = ("pending", "done", "failed")


def spool_key(sop_instance_uid: str) -> str:
    """The spool's name for an instance: a SHA-256 of its SOP Instance UID (32 hex digits)."""
    return hashlib.sha256(sop_instance_uid.strip().encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Item:
    """One pending instance: its key, file and when it was received (ns since the epoch)."""

    key: str
    path: Path
    received_ns: int


class Spool:
    """The on-disk spool; safe to use from several threads of one process.

    Args:
        root: the spool folder (created).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        for state in STATES:
            (self.root / state).mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._claimed: set[str] = set()
        # pending and unclaimed, oldest first: a heap of (received_ns, order queued, key, item)
        # (file times can tie: the order queued breaks it), and the keys in it (an entry whose
        # key is no longer there is stale and skipped)
        self._heap: list[tuple[int, int, str, Item]] = []
        self._order = itertools.count()
        self._queued: set[str] = set()
        self.recover()

    def _path(self, state: str, key: str) -> Path:
        return self.root / state / (f"{key}.dcm" if state == "pending" else f"{key}.json")

    def state(self, key: str) -> str | None:
        """``pending``, ``done``, ``failed`` or None (never seen)."""
        for state in ("done", "failed", "pending"):
            if self._path(state, key).exists():
                return state
        return None

    def put(self, sop_instance_uid: str, data: bytes) -> bool:
        """Store a received instance durably.

        Returns:
            True when stored; False when the instance was already received (any state).

        Raises:
            ValueError: an empty SOP Instance UID.
            OSError: the file could not be written (the C-STORE must then fail).
        """
        if not sop_instance_uid.strip():
            raise ValueError("an instance without SOP Instance UID cannot be spooled")
        key = spool_key(sop_instance_uid)
        with self._lock:
            if self.state(key) is not None:
                return False
            try:
                path = atomic_write_bytes(self._path("pending", key), data)
            except FileExistsError:
                return False
            self._queue(Item(key, path, path.stat().st_mtime_ns))
        return True

    def _queue(self, item: Item) -> None:
        """Queue ``item`` for :meth:`claim` (under the lock)."""
        if item.key not in self._queued and item.key not in self._claimed:
            self._queued.add(item.key)
            heapq.heappush(self._heap, (item.received_ns, next(self._order), item.key, item))

    def pending(self) -> list[Item]:
        """Every pending instance, oldest first."""
        items = []
        for path in (self.root / "pending").glob("*.dcm"):
            try:
                items.append(Item(path.stem, path, path.stat().st_mtime_ns))
            except FileNotFoundError:  # finished meanwhile
                continue
        return sorted(items, key=lambda i: (i.received_ns, i.key))

    def claim(self, n: int) -> list[Item]:
        """Up to ``n`` pending instances that no other worker holds; release with :meth:`finish`."""
        with self._lock:
            if not self._queued:  # nothing known: look in pending/ (start, files put by hand)
                for item in self.pending():
                    self._queue(item)
            items: list[Item] = []
            while self._heap and len(items) < n:
                _, _, key, item = heapq.heappop(self._heap)
                if key in self._queued:
                    self._queued.discard(key)
                    if item.path.exists():  # not taken away by hand meanwhile
                        items.append(item)
            self._claimed.update(i.key for i in items)
        return items

    def release(self, item: Item) -> None:
        """Give a claimed instance back unfinished (it stays pending, in its place in line)."""
        with self._lock:
            self._claimed.discard(item.key)
            if item.path.exists():
                self._queue(item)

    def finish(self, item: Item, record: dict[str, Any], *, ok: bool) -> Path:
        """Record the outcome (``done`` or ``failed``) atomically, then drop the pending file."""
        out = atomic_write_json(
            self._path("done" if ok else "failed", item.key), record, overwrite=True
        )
        with self._lock:
            item.path.unlink(missing_ok=True)
            self._claimed.discard(item.key)
            self._queued.discard(item.key)
        return out

    def record(self, key: str) -> dict[str, Any] | None:
        """The done or failed record of ``key``, or None."""
        for state in ("done", "failed"):
            path = self._path(state, key)
            if path.exists():
                return {"state": state, **json.loads(path.read_text(encoding="utf-8"))}
        return None

    def counts(self) -> dict[str, int]:
        """How many instances are in each state."""
        return {
            "pending": sum(1 for _ in (self.root / "pending").glob("*.dcm")),
            "done": sum(1 for _ in (self.root / "done").glob("*.json")),
            "failed": sum(1 for _ in (self.root / "failed").glob("*.json")),
        }

    def recover(self) -> int:
        """After a crash: drop pending files whose outcome was already recorded.

        Returns:
            How many instances are left pending (to be scored).
        """
        for item in self.pending():
            if self._path("done", item.key).exists() or self._path("failed", item.key).exists():
                item.path.unlink(missing_ok=True)
        with self._lock:
            self._heap.clear()
            self._queued.clear()
            for item in self.pending():
                self._queue(item)
            left = len(self._queued) + len(self._claimed)
        if left:
            log.info("spool %s: %d instances pending from an earlier run", self.root, left)
        return left
