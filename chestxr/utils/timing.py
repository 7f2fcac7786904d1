"""Where a run's wall time went: phases (data, fit, evaluation, report) and each epoch.

``train`` writes them to ``<run>/timings.json`` so a user (and ``benchmarks/run.py``) can see what
took the time: generating or indexing the data, the first epoch (which also fills the
preprocessing cache), the later epochs, testing, evaluation and the Grad-CAM report.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L


class EpochTimer(L.Callback):
    """Wall seconds of each training epoch, validation included (the time between epoch starts
    and the last epoch's end)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = time.perf_counter()
        if self._start is not None:  # the previous epoch, with its validation
            self.seconds.append(now - self._start)
        self._start = now

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._start is not None:
            self.seconds.append(time.perf_counter() - self._start)
            self._start = None


class PhaseTimes:
    """Wall seconds of named phases of a run, in the order they ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the ``with`` block under ``name`` (added to earlier blocks of that name)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def summary(self, epochs: list[float] | None = None) -> dict[str, Any]:
        """Phases and, when given, the epochs: first (fills the cache), later ones (mean)."""
        out: dict[str, Any] = {"phases_s": {k: round(v, 3) for k, v in self.seconds.items()}}
        if epochs:
            later = epochs[1:]
            out["epochs_s"] = [round(e, 3) for e in epochs]
            out["first_epoch_s"] = round(epochs[0], 3)
            out["later_epoch_mean_s"] = round(sum(later) / len(later), 3) if later else None
        out["total_s"] = round(sum(self.seconds.values()), 3)
        return out
