"""A CSV logger that keeps the earlier epochs' rows when a run resumes.

Lightning's ``CSVLogger`` deletes ``metrics.csv`` when its folder is not empty, so a resumed run
loses the rows of the epochs before the interruption. :class:`ResumableCSVLogger` keeps them: the
rows logged before the step the run resumes from stay, those logged after it (the interrupted,
lost part of the run) are dropped, and the new rows follow.
"""

from __future__ import annotations

import csv
import os
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from chestxr.utils.files import atomic_write_text, csv_text


class _KeepingWriter(ExperimentWriter):
    """Lightning's writer, reading the existing ``metrics.csv`` instead of deleting it."""

    def _check_log_dir_exists(self) -> None:
        self._earlier: list[dict[str, str]] | None = None
        self._earlier_keys: list[str] = []
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                self._earlier = list(reader)
                self._earlier_keys = list(reader.fieldnames or [])

    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        if self._earlier is not None:
            first = len(self.metrics) if step is None else step
            kept = [r for r in self._earlier if _step(r) < first]
            keys = self._earlier_keys
            atomic_write_text(
                self.metrics_file_path,
                csv_text(keys, ([r.get(k, "") for k in keys] for r in kept)),
                overwrite=True,
            )
            self.metrics_keys = sorted(keys)
            self._earlier = None
        super().log_metrics(metrics_dict, step)


def _step(row: dict[str, str]) -> float:
    try:
        return float(row.get("step") or "nan")
    except ValueError:
        return float("nan")


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` that appends to an existing ``metrics.csv`` (see the module docstring)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment
