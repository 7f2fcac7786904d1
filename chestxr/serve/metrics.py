"""The node's counters and latency percentiles (for ``GET /metrics`` and the logs)."""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

import numpy as np

COUNTERS = ("received", "duplicates", "rejected", "scored", "failed", "sent", "send_errors")


class Metrics:
    """Thread-safe counters and the last ``window`` latencies of each kind.

    Args:
        window: how many recent latencies the percentiles are computed over.
    """

    def __init__(self, window: int = 1000) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._latency: dict[str, deque[float]] = {
            "scored": deque(maxlen=window),
            "sent": deque(maxlen=window),
        }

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to counter ``name``.

        Raises:
            KeyError: unknown counter.
        """
        if name not in self._counts:
            raise KeyError(f"unknown counter {name!r}; known: {COUNTERS}")
        with self._lock:
            self._counts[name] += n

    def latency(self, kind: str, seconds: float) -> None:
        """Record a latency from reception to ``kind`` (``scored`` or ``sent``)."""
        with self._lock:
            self._latency[kind].append(float(seconds))

    def latencies(self, kind: str) -> list[float]:
        """The recorded latencies of ``kind`` (``scored`` or ``sent``), oldest first."""
        with self._lock:
            return list(self._latency[kind])

    def counts(self) -> dict[str, int]:
        """The counters alone (cheap: no percentiles)."""
        with self._lock:
            return dict(self._counts)

    def snapshot(self, **extra: Any) -> dict[str, Any]:
        """Counters, latency p50/p95 in seconds (null when none yet), and ``extra``."""
        with self._lock:
            out: dict[str, Any] = dict(self._counts)
            for kind, values in self._latency.items():
                arr = np.asarray(values, dtype=float)
                for q in (50, 95):
                    out[f"latency_{kind}_p{q}_s"] = (
                        round(float(np.percentile(arr, q)), 4) if arr.size else None
                    )
        out.update(extra)
        return out
