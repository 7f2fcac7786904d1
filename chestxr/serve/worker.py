"""Scoring: the spool's pending instances, in small batches, with the model's own preprocessing,
stored operating point and Grad-CAM; results written as DICOM into the outbox.

An instance's results (SR, and SC when CAMs are on) are written into ``staging/`` beside the
outbox and moved into the outbox only once all of them exist, so the sender never sends an SR
whose Secondary Capture could not be built."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
import pydicom
import torch
from pydicom.dataset import Dataset
from scipy.special import expit

from chestxr.io import RadiographReadError
from chestxr.serve import adapter, results
from chestxr.serve.admission import REQUIRED, NotScorable, check_frontal_chest
from chestxr.serve.metrics import Metrics
from chestxr.serve.spool import Item, Spool
from chestxr.utils.ids import anonymous_id

log = logging.getLogger(__name__)


Scores = tuple[np.ndarray, np.ndarray | None, np.ndarray | None]
STAGES = ("read", "forward", "write")  # a batch's way through the worker
_T = TypeVar("_T")


class Prepared(NamedTuple):
    """A claimed instance read for the model: its spool item, header and input image."""

    item: Item
    ds: Dataset
    image: torch.Tensor


class Scorer:
    """The model with its preprocessing; scores files in batches (thread-safe).

    Args:
        ckpt_path: a chestxr checkpoint.
        cams: also compute Grad-CAM overlays.
        cam_method: ``gradcam`` or ``gradcam++``.
    """

    def __init__(self, ckpt_path: str | Path, *, cams: bool = True, cam_method: str = "gradcam"):
        self.model, self.info = adapter.load(ckpt_path)
        self.transform = adapter.make_transform(self.info["preprocess"])
        self.cams = cams
        self.cam_method = cam_method
        self._lock = threading.Lock()
        self.device = next(self.model.parameters()).device
        if not self.info["operating_point_stored"]:
            log.warning("the checkpoint holds no operating point; deciding at 0.5")

    def prepare(self, path: Path) -> torch.Tensor:
        """The model input of one file.

        Raises:
            NotScorable: the file cannot be read.
        """
        try:
            return adapter.preprocess_one(self.transform, path)
        except RadiographReadError as err:
            raise NotScorable(f"unreadable: {adapter.read_error_reason(err)}") from err

    def score(self, images: torch.Tensor) -> Scores:
        """Probabilities ``(B, K)`` and, when enabled, CAMs ``(B, S, S)`` with the output each
        explains ``(B,)``: the image's most probable finding (output 0 of a binary model)."""
        with self._lock:
            if self.cams:  # scores and maps from one forward pass
                maps, explained, logits = adapter.cams(self.model, images, self.cam_method)
                return expit(logits), maps, explained
            with torch.inference_mode():
                logits = self.model(images.to(self.device)).float()
        return torch.sigmoid(logits).cpu().numpy(), None, None

    def outputs(self, prob: np.ndarray) -> list[dict[str, Any]]:
        """One scored image's outputs: name, probability, threshold, decision."""
        return [
            {"name": n, "probability": float(p), "threshold": float(t), "decision": bool(p >= t)}
            for n, p, t in zip(self.info["outputs"], prob, self.info["thresholds"], strict=True)
        ]


class Worker:
    """Scores the spool until stopped.

    Args:
        spool: the intake spool.
        scorer: the model.
        outbox: folder where the SR and SC files are put for the sender (built in ``staging/``
            beside it first).
        metrics: counters to update.
        batch_size: most instances per forward pass.
        poll_s: how long to sleep when nothing is pending.
        overlap: read and write in threads of their own while the model runs (see :meth:`run`);
            None: where they can overlap it (:func:`stages_can_overlap`).
    """

    def __init__(
        self,
        spool: Spool,
        scorer: Scorer,
        outbox: Path,
        metrics: Metrics,
        *,
        batch_size: int = 8,
        poll_s: float = 0.05,
        overlap: bool | None = None,
    ) -> None:
        self.spool, self.scorer, self.outbox, self.metrics = spool, scorer, Path(outbox), metrics
        self.staging = self.outbox.parent / "staging"
        for folder in (self.outbox, self.staging):
            folder.mkdir(parents=True, exist_ok=True)
        self.batch_size, self.poll_s = batch_size, poll_s
        self.overlap = stages_can_overlap(scorer.device) if overlap is None else overlap
        # CPU seconds of the thread(s) running each stage, so far: where the node's time goes
        self.cpu_s = dict.fromkeys(STAGES, 0.0)
        self.wake = threading.Event()
        self.reports = results.ReportBuilder(scorer.info)

    def run(self, stop: threading.Event) -> None:
        """Score the spool until ``stop`` is set; whatever a failure leaves unfinished stays
        pending.

        With ``overlap``, in a pipeline of three threads: a reader claims and reads the next
        batch, and a writer builds and records the results of the previous one, while this
        thread runs the model: the forward pass releases the interpreter lock, so the Python
        work of reading and writing overlaps it instead of following it. At most one batch waits
        between stages; on ``stop`` the batches already read are scored and recorded. Without,
        each batch is read, scored and recorded in turn on this thread: on a single CPU core the
        stages cannot overlap, and three threads would only take turns on it (the pipeline
        alone on one core, 96 instances: the CPU besides the forward pass's was 13.4 ms per
        instance in turn, 14.4 in three threads, medians of eight interleaved pairs of runs,
        lower in turn in seven; under DICOM load, six pairs, the machine's noise hid any
        difference in throughput either way).
        """
        if not self.overlap:
            self._run_in_turn(stop)
            return
        read: queue.Queue[list[Prepared] | None] = queue.Queue(maxsize=1)
        scored: queue.Queue[tuple[list[Prepared], Scores] | None] = queue.Queue(maxsize=1)
        reader = threading.Thread(target=self._read_loop, args=(stop, read), daemon=True)
        writer = threading.Thread(target=self._write_loop, args=(stop, scored), daemon=True)
        for thread, stage in ((reader, "read"), (writer, "write")):
            thread.name = f"{threading.current_thread().name}-{stage}"
            thread.start()
        try:
            while (batch := read.get()) is not None:
                try:
                    scores = self._timed("forward", self.score, batch)
                except Exception:
                    self._left_pending([p.item for p in batch], "failed in the model", stop)
                    continue
                scored.put((batch, scores))
        finally:
            scored.put(None)
            writer.join()
            reader.join()

    def _run_in_turn(self, stop: threading.Event) -> None:
        """Claim, read, score and record one batch after another until ``stop``."""
        while not stop.is_set():
            if not (items := self._claim()):
                continue
            try:
                self.process(items)
            except Exception:  # the ones already finished stay so: release leaves them be
                self._left_pending(items, "failed", stop)

    def _read_loop(self, stop: threading.Event, out: queue.Queue) -> None:
        """Claim and read batches into ``out`` until ``stop``; then None."""
        try:
            while not stop.is_set():
                if not (items := self._claim()):
                    continue
                try:
                    batch = self._timed("read", self.read, items)
                except Exception:
                    self._left_pending(items, "failed while read", stop)
                    continue
                if batch:
                    out.put(batch)
        finally:
            out.put(None)

    def _write_loop(self, stop: threading.Event, inbox: queue.Queue) -> None:
        """Record the scored batches of ``inbox`` until None."""
        while (job := inbox.get()) is not None:
            batch, scores = job
            try:
                self._timed("write", self.record, batch, scores)
            except Exception:
                self._left_pending([p.item for p in batch], "not written", stop)

    def _claim(self) -> list[Item]:
        """The next batch of pending instances; none after waiting up to ``poll_s`` for one."""
        items = self.spool.claim(self.batch_size)
        if not items:
            self.wake.wait(self.poll_s)
            self.wake.clear()
        return items

    def _left_pending(self, items: list[Item], what: str, stop: threading.Event) -> None:
        """Log the exception being handled, give ``items`` back to the spool, then pause 1 s."""
        log.exception("batch of %d %s; left pending", len(items), what)
        self._release(items)
        stop.wait(1.0)

    def _release(self, items: list[Item]) -> None:
        for item in items:
            self.spool.release(item)

    def _fail(self, item: Item, reason: str, ds: Dataset | None) -> None:
        record = {
            "id": _anon(ds, "SOPInstanceUID", "scan", item.key),
            "study": _anon(ds, "StudyInstanceUID", "study", ""),
            "reason": reason,
            "received_ns": item.received_ns,
        }
        self.spool.finish(item, record, ok=False)
        self.metrics.count("failed")
        log.warning("not scored %s: %s", record["id"], reason)

    def process(self, items: list[Item]) -> None:
        """Score one batch of claimed items; each ends done or failed."""
        batch = self._timed("read", self.read, items)
        if batch:
            scores = self._timed("forward", self.score, batch)
            self._timed("write", self.record, batch, scores)

    def _timed(self, stage: str, step: Callable[..., _T], *args: Any) -> _T:
        """``step(*args)``, its thread's CPU time added to ``cpu_s[stage]`` (each stage is
        counted by one thread at a time)."""
        start = time.thread_time()
        try:
            return step(*args)
        finally:
            self.cpu_s[stage] += time.thread_time() - start

    def read(self, items: list[Item]) -> list[Prepared]:
        """Read and preprocess claimed items; the ones that cannot be scored get their failure
        record now."""
        good: list[Prepared] = []
        for item in items:
            ds = None
            try:
                try:
                    ds = pydicom.dcmread(item.path, stop_before_pixels=True)
                except Exception as err:
                    raise NotScorable(f"unreadable DICOM: {type(err).__name__}: {err}") from err
                for key in REQUIRED:
                    if not ds.get(key):
                        raise NotScorable(f"DICOM lacks {key}")
                check_frontal_chest(ds)
                good.append(Prepared(item, ds, self.scorer.prepare(item.path)))
            except NotScorable as err:
                self._fail(item, str(err), ds)
        return good

    def score(self, batch: list[Prepared]) -> Scores:
        """The model's outputs for a read batch."""
        return self.scorer.score(torch.stack([p.image for p in batch]))

    def record(self, batch: list[Prepared], scores: Scores) -> None:
        """Write each scored instance's results and record it done (or failed, with the reason).

        Raises:
            OSError: results could not be written (e.g. a full disk); the instances not yet
                recorded stay pending and are retried.
        """
        prob, maps, explained = scores
        for j, (item, ds, _) in enumerate(batch):
            result: dict[str, Any] = {"outputs": self.scorer.outputs(prob[j])}
            if explained is not None:
                result["explained"] = self.scorer.info["outputs"][int(explained[j])]
            try:
                files = self._write_results(item, ds, result, None if maps is None else maps[j])
            except OSError:
                self._discard_staged(item)
                raise
            except Exception as err:  # one instance whose results cannot be built: no poison pill
                self._discard_staged(item)
                self._fail(item, f"results not written: {type(err).__name__}: {err}", ds)
                continue
            latency = (time.time_ns() - item.received_ns) / 1e9
            record = {
                "id": anonymous_id(str(ds.SOPInstanceUID), prefix="scan"),
                "study": anonymous_id(str(ds.StudyInstanceUID), prefix="study"),
                **result,
                "model_version": self.scorer.info["model_version"],
                "config_hash": self.scorer.info["config_hash"],
                "results": [Path(f).name for f in files],
                "received_ns": item.received_ns,
                "latency_s": round(latency, 4),
            }
            self.spool.finish(item, record, ok=True)
            self.metrics.count("scored")
            self.metrics.latency("scored", latency)
            log.info(
                "scored %s: %s",
                record["id"],
                ", ".join(f"{o['name']}={o['probability']:.3f}" for o in result["outputs"]),
            )

    def _write_results(
        self, item: Item, ds: Dataset, result: dict[str, Any], cam: np.ndarray | None
    ) -> list[str]:
        """Build the instance's results in ``staging/``, then move them all into the outbox."""
        kinds = ["sr"]
        results.write_sr(ds, result, self.scorer.info, self._staged(item, "sr"), self.reports)
        if cam is not None:
            rgb = adapter.overlay(item.path, cam, self.scorer.info["preprocess"])
            results.build_sc(ds, rgb, result, self.scorer.info, self._staged(item, "sc"))
            kinds.append("sc")
        for kind in kinds:  # every file is complete: only now does the sender see them
            os.replace(self._staged(item, kind), self._out(item, kind))
        return [str(self._out(item, kind)) for kind in kinds]

    def _discard_staged(self, item: Item) -> None:
        for kind in ("sr", "sc"):
            self._staged(item, kind).unlink(missing_ok=True)

    def _staged(self, item: Item, kind: str) -> Path:
        return self.staging / f"{item.key}.{kind}.dcm"

    def _out(self, item: Item, kind: str) -> Path:
        return self.outbox / f"{item.key}.{kind}.dcm"


def stages_can_overlap(device: torch.device) -> bool:
    """Whether reading and writing can run while the model does: the model runs on an
    accelerator, or this process may run on more than one CPU core."""
    if device.type != "cpu":
        return True
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform (macOS, Windows)
        cores = os.cpu_count() or 1
    return cores > 1


def _anon(ds: Dataset | None, attr: str, prefix: str, default: str) -> str:
    value = str(ds.get(attr, "") or "") if ds is not None else ""
    return anonymous_id(value, prefix=prefix) if value else default
