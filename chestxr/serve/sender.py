"""Results to the PACS: C-STORE of the outbox's files with retries and exponential back-off.

A file stays in ``outbox/`` until the destination has accepted it, then moves to ``sent/``; when
the destination is down nothing is lost, and everything is sent once it is back (also after a
restart of the node). Connection failures are retried without end (the delay is capped by
``backoff_max_s``); a file the destination *refuses* (a C-STORE failure status) ``max_rejections``
times moves to ``rejected/`` with a warning, so that one bad result cannot block the queue; a
file that cannot be read as DICOM at all moves there at once (the reason logged, no identifiers).
No error in one file stops the sender's thread.

Files are sent by *lanes*: threads that each hold one association (or STOW-RS connection) open
while results keep coming, up to ``destination.associations`` of them, one more for every
``files_per_lane`` files waiting; a lane closes its association once nothing has come for
``idle_s``. At a node's pace (a batch of results every few tenths of a second) an association
then carries tens of files instead of one or two, and its set-up (~3 ms of CPU, two threads) is
paid once per burst instead of once per file or two.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import ComprehensiveSRStorage, SecondaryCaptureImageStorage

from chestxr.serve.metrics import Metrics
from chestxr.serve.stow import StowClient

log = logging.getLogger(__name__)
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
RESULT_SOP_CLASSES = (COMPREHENSIVE_3D_SR, ComprehensiveSRStorage, SecondaryCaptureImageStorage)


DUL_IDLE_POLL_S = 0.005  # pynetdicom's default: 1 ms
DUL_WAITING_POLL_S = 0.05  # a lane's reader while the lane waits for results to send


def tune(assoc: Any) -> None:
    """Tune an association's transport for request/response traffic: TCP_NODELAY, and a 5 ms
    idle poll of its reader.

    pynetdicom writes a C-STORE's command and data set as separate small writes; with Nagle on,
    the second can wait for the peer's delayed acknowledgement (~40 ms on Linux): SRs to Orthanc
    over one association went from 11 to 19 per second with it off. Each association's reader
    thread (pynetdicom's DUL) checks its socket every 1 ms while idle, ~0.02 of a CPU core per
    association measured here (an open association, idle, cost 0.057 cores in all, 0.035 with the
    5 ms poll); while a PDU is being read it does not sleep, so only a new exchange's first PDU
    waits up to 5 ms. ``_run_loop_delay`` is the knob pynetdicom's reactor documents for this.
    """
    dul = getattr(assoc, "dul", None)
    if dul is not None and hasattr(dul, "_run_loop_delay"):
        dul._run_loop_delay = DUL_IDLE_POLL_S
    sock = getattr(getattr(dul, "socket", None), "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass
class Destination:
    """Where results go: the PACS's host, port and AE title, and ours."""

    host: str
    port: int
    ae_title: str
    calling_ae_title: str = "CHESTXR"
    tls: object | None = None  # an ssl.SSLContext for a TLS destination
    associations: int = 1  # sent over this many associations at once (a PACS stores in parallel)
    stow: StowClient | None = None  # set: sent by DICOMweb STOW-RS instead of C-STORE

    def __str__(self) -> str:
        return self.stow.url if self.stow else f"{self.ae_title}@{self.host}:{self.port}"


@dataclass
class _Backoff:
    attempts: int = 0
    rejections: int = 0
    next_try: float = 0.0


class _Association:
    """One association to the PACS, kept open between files by a lane."""

    def __init__(self, assoc: Any) -> None:
        self.assoc = assoc
        # a file in a transfer syntax the PACS accepted is sent as its bytes (pynetdicom streams
        # the file), not decoded and encoded again: for an SR that was most of the sending's cost
        self.as_is = {
            (str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts
        }
        tune(assoc)

    def usable(self) -> bool:
        """Still established: the PACS may have dropped it (or asked to release it) while it was
        idle. Its reader (pynetdicom's DUL, never paused) has seen that even while the reactor
        is paused; the request then goes over a new association instead of waiting for an answer
        that cannot come."""
        dul = getattr(self.assoc, "dul", None)
        if not (self.assoc.is_established and dul is not None and dul.is_alive()):
            return False
        return dul.state_machine.current_state == "Sta6" and dul.peek_next_pdu() is None

    def waiting(self, yes: bool) -> None:
        """Slow the association's reader (pynetdicom's DUL) to a 50 ms poll while the lane waits
        for results, back to 5 ms before it sends: at 5 ms, an open association whose lane
        waits costs ~0.011 of a core, ~1 ms of CPU per result in a load run with two lanes open
        (0.003 at 50 ms). The first request after a wait may wait up to 50 ms for the reader
        (which also writes what is sent), and a PACS that drops the association meanwhile may
        go unnoticed as long before the next request (a send error, then a new association);
        within a burst the reader never sleeps longer than 5 ms. (Set only while no request is
        under way: the reader reads the delay each time it sleeps.)"""
        dul = getattr(self.assoc, "dul", None)
        if dul is not None and hasattr(dul, "_run_loop_delay"):
            dul._run_loop_delay = DUL_WAITING_POLL_S if yes else DUL_IDLE_POLL_S

    def idle(self) -> None:
        """Pause the association's reactor between requests: pynetdicom's reactor otherwise
        wakes every 1 ms (a fixed sleep) for as long as the association is open, ~0.02 of a core
        each (a requestor's reactor only serves requests from the peer, which a PACS does not
        send on a storage association). pynetdicom pauses it the same way around every request
        it sends (``send_c_store`` waits for it to be paused, which it then already is), and
        lets it run again when releasing or aborting."""
        checkpoint = getattr(self.assoc, "_reactor_checkpoint", None)
        if checkpoint is not None:
            checkpoint.clear()

    def close(self) -> None:
        """Release the association, or abort it when it cannot be released any more."""
        self.waiting(False)  # the release's answer read within 5 ms (its request may wait 50)
        if self.usable():
            self.assoc.release()
        else:
            self.assoc.abort()


@dataclass
class Sender:
    """Sends the outbox to ``destination`` until stopped.

    Args:
        outbox: folder of result files waiting to be sent.
        destination: the PACS, or None to keep results in the output folder only.
        metrics: counters to update.
        received_ns: maps a file's spool key to its reception time, for the latency.
        backoff_s: first retry delay; doubled per failure up to ``backoff_max_s``.
        max_rejections: refusals by the destination before a file moves to ``rejected/``
            (``retry.max_rejections`` in ``conf/serve.yaml``).
        files_per_lane: a further lane (association) opens for every this many files waiting,
            up to ``destination.associations``.
        idle_s: a lane with nothing to send keeps its association open this long.
    """

    outbox: Path
    destination: Destination | None
    metrics: Metrics
    max_rejections: int
    received_ns: object = None
    backoff_s: float = 1.0
    backoff_max_s: float = 60.0
    timeout_s: float = 10.0
    poll_s: float = 0.1
    files_per_lane: int = 4
    idle_s: float = 1.0
    _state: dict[str, _Backoff] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.outbox = Path(self.outbox)
        self.sent = self.outbox.parent / "sent"
        self.rejected = self.outbox.parent / "rejected"
        for folder in (self.outbox, self.sent, self.rejected):
            folder.mkdir(parents=True, exist_ok=True)
        self.wake = threading.Event()
        self._queue: deque[Path] = deque()  # due files no lane has taken yet, oldest first
        self._taken: set[str] = set()  # names queued or being sent
        self._ready = threading.Condition()
        self._lanes: list[threading.Thread] = []
        self._working = 0  # lanes that have not decided to end
        self._linked = 0  # lanes holding (or opening) an association
        self._cap, self._cap_until = 0, 0.0  # lanes the PACS took when it refused one more

    def waiting(self) -> list[Path]:
        """Files not yet accepted by the destination, oldest first."""
        files = []
        for p in self.outbox.glob("*.dcm"):
            try:
                files.append((p.stat().st_mtime_ns, p))
            except FileNotFoundError:
                continue
        return [p for _, p in sorted(files)]

    def run(self, stop: threading.Event) -> None:
        """Loop: hand what is due to the lanes, sleep otherwise; on ``stop``, wait for the
        lanes to finish the file each is sending."""
        if self.destination is None:
            log.info("no destination configured: results stay in %s", self.outbox)
            return
        try:
            while not stop.is_set():
                try:
                    self.dispatch(stop)
                except Exception as err:  # e.g. the outbox unreadable for a moment
                    log.error("sender: %s: %s", type(err).__name__, err)
                    stop.wait(1.0)
                self.wake.wait(self.poll_s)
                self.wake.clear()
        finally:
            with self._ready:
                self._taken.difference_update(p.name for p in self._queue)
                self._queue.clear()
                self._ready.notify_all()
            for lane in self._lanes:
                lane.join()
            if self.destination.stow is not None:
                self.destination.stow.close()

    def dispatch(self, stop: threading.Event) -> None:
        """Queue the files now due (each once) and start the lanes they need."""
        now = time.monotonic()
        with self._ready:
            due = [
                p
                for p in self.waiting()
                if p.name not in self._taken and self._state.get(p.name, _Backoff()).next_try <= now
            ]
            self._queue.extend(due)
            self._taken.update(p.name for p in due)
            if due:
                self._ready.notify_all()
            most = max(1, int(self.destination.associations)) if self.destination else 1
            if now < self._cap_until:  # the PACS refused one more association a moment ago
                most = min(most, self._cap)
            wanted = min(most, -(-len(self._queue) // max(1, self.files_per_lane)))
            self._lanes = [lane for lane in self._lanes if lane.is_alive()]
            while self._working < wanted:
                lane = threading.Thread(
                    target=self._lane, args=(stop,), name="chestxr-sender-lane", daemon=True
                )
                lane.start()
                self._working += 1
                self._lanes.append(lane)

    def _next(
        self, stop: threading.Event, wait: float, link: _Association | None = None
    ) -> Path | None:
        """The next queued file, waiting up to ``wait`` seconds for one; None: the lane ends.
        ``link`` (the lane's association) polls slowly while the lane waits."""
        end = time.monotonic() + wait
        with self._ready:
            if link is not None and not self._queue and not stop.is_set() and wait > 0:
                link.waiting(True)
            while not self._queue and not stop.is_set():
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._ready.wait(left)
            if self._queue and not stop.is_set():
                if link is not None:
                    link.waiting(False)
                return self._queue.popleft()
            self._working -= 1  # decided under the lock: dispatch() starts another if needed
            return None

    def _unreachable(self, path: Path, why: str) -> bool:
        """A lane could not reach the destination with ``path`` in hand. While other lanes hold
        (or open) associations (the PACS takes fewer than ``destination.associations``),
        ``path`` goes back to the front of the queue for them, lanes are capped at theirs for a
        while, and the lane ends (True). Otherwise ``path`` and everything queued wait, with
        back-off (False)."""
        with self._ready:
            if self._linked > 0:
                self._queue.appendleft(path)
                self._cap, self._cap_until = self._linked, time.monotonic() + self.backoff_max_s
                self._working -= 1
                log.info("%s took no further association; sending over %d", why, self._linked)
                return True
            files = [path, *self._queue]
            self._queue.clear()
        self._failed(files, why)
        self._untake(*files[1:])  # back in the queue once due (``path``: by the lane)
        return False

    def _untake(self, *paths: Path) -> None:
        with self._ready:
            self._taken.difference_update(p.name for p in paths)

    def _lane(self, stop: threading.Event) -> None:
        """Send queued files over one association (or STOW-RS) until none comes for
        ``idle_s``; no error ends it without ending the files it holds."""
        link: _Association | None = None
        ended = False  # by _next() or _unreachable(), which count the lane out
        try:
            while (path := self._next(stop, self.idle_s if link else 0.0, link)) is not None:
                given_back = False
                try:
                    if self.destination is not None and self.destination.stow is not None:
                        if not self._stow_one(self.destination.stow, path):  # unreachable
                            why = f"{self.destination}: unavailable"
                            given_back = ended = self._unreachable(path, why)
                            if ended:
                                return
                        continue
                    if link is not None and not link.usable():
                        self._unlink(link)
                        link = None
                    if link is None:
                        with self._ready:  # counted while opening: a lane refused meanwhile
                            self._linked += 1  # hands its file over instead of backing off
                        link = self._connect()
                        if link is None:
                            with self._ready:
                                self._linked -= 1
                            why = f"no association with {self.destination}"
                            given_back = ended = self._unreachable(path, why)
                            if ended:
                                return
                            continue
                    if self._store_one(link.assoc, link.as_is, path) == "broken":
                        self._unlink(link)  # the transport failed: a new association for the next
                        link = None
                except Exception as err:  # a bug or an unforeseen error must not lose the file
                    log.error("sending failed: %s: %s", type(err).__name__, err)
                    self._failed([path], type(err).__name__)
                finally:
                    if not given_back:
                        self._untake(path)
                if link is not None:
                    link.idle()
            ended = True
        finally:
            if link is not None:
                self._unlink(link)
            if not ended:  # an error escaped (none should): count the lane out all the same
                with self._ready:
                    self._working -= 1

    def _unlink(self, link: _Association) -> None:
        """Close a lane's association (errors logged, never raised)."""
        with self._ready:
            self._linked -= 1
        try:
            link.close()
        except Exception as err:
            log.warning("association not released: %s: %s", type(err).__name__, err)

    def _failed(self, files: list[Path], why: str) -> None:
        if not files:
            return
        for p in files:
            st = self._state.setdefault(p.name, _Backoff())
            st.attempts += 1
            delay = min(self.backoff_s * 2 ** (st.attempts - 1), self.backoff_max_s)
            st.next_try = time.monotonic() + delay
        self.metrics.count("send_errors", len(files))
        log.warning("could not send %d results (%s); retrying with back-off", len(files), why)

    def _refused(self, path: Path, why: str) -> None:
        st = self._state.setdefault(path.name, _Backoff())
        st.rejections += 1
        if st.rejections >= self.max_rejections:
            self._set_aside(
                path,
                f"{self.destination.ae_title if self.destination else 'destination'} refused it "
                f"{st.rejections} times ({why})",
            )
            return
        self._failed([path], why)

    def _set_aside(self, path: Path, why: str) -> None:
        """Move ``path`` to ``rejected/`` and log why (file name and reason only)."""
        try:
            os.replace(path, self.rejected / path.name)
        except FileNotFoundError:
            return
        finally:
            self._state.pop(path.name, None)
        self.metrics.count("send_errors")
        log.error("result %s not sent: %s; moved to %s", path.name, why, self.rejected)

    def _connect(self) -> _Association | None:
        """A new association with the destination, or None when it cannot be had."""
        dest = self.destination
        if dest is None:
            return None
        ae = AE(ae_title=dest.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        for sop in RESULT_SOP_CLASSES:
            ae.add_requested_context(sop, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        tls = (dest.tls, dest.host) if dest.tls is not None else None
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=tls)
        if not assoc.is_established:
            return None
        _config.STORE_SEND_CHUNKED_DATASET = True
        return _Association(assoc)

    def send(self, files: list[Path]) -> int:
        """Send ``files`` over one association (or STOW-RS), now, outside the lanes (not while
        :meth:`run` is running); returns how many were accepted."""
        dest = self.destination
        if dest is None:
            return 0
        if dest.stow is not None:
            ok = 0
            for i, path in enumerate(files):
                sent = self._stow_one(dest.stow, path)
                if not sent:  # unreachable: the rest wait too
                    self._failed(files[i:], f"{dest}: unavailable")
                    break
                ok += sent == "stored"
            return ok
        link = self._connect()
        if link is None:
            self._failed(files, f"no association with {dest}")
            return 0
        outcomes = []
        try:
            for path in files:
                outcomes.append(self._store_one(link.assoc, link.as_is, path))
                if outcomes[-1] == "broken":
                    break
        finally:
            link.close()
        return outcomes.count("sent")

    def _store_one(self, assoc: Any, as_is: set[tuple[str, str]], path: Path) -> str:
        """C-STORE one file: ``sent``; ``broken`` when the transport failed (the association is
        then unusable; the file waits, with back-off); ``kept`` otherwise (refused, set aside,
        gone, or waiting with back-off over a still usable association)."""
        meta = self._meta(path)
        if meta is None:
            return "kept"
        key = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
        try:
            what: Path | Dataset = path if key in as_is else pydicom.dcmread(path)
        except FileNotFoundError:  # moved away meanwhile: nothing to send
            self._state.pop(path.name, None)
            return "kept"
        except Exception as err:  # truncated after its header...: retrying cannot help
            self._set_aside(path, f"unreadable: {type(err).__name__}")
            return "kept"
        try:
            status = assoc.send_c_store(what)
        except (OSError, RuntimeError) as err:  # the transport
            self._failed([path], f"{type(err).__name__}: {err}")
            return "kept" if assoc.is_established else "broken"
        except Exception as err:  # this file (no accepted context for it, bad encoding)
            self._refused(path, type(err).__name__)
            return "kept" if assoc.is_established else "broken"
        code = getattr(status, "Status", None)
        if code is None:  # no answer (timeout, aborted): a transport failure
            self._failed([path], "no C-STORE response")
            return "broken"
        if code != 0x0000 and (code & 0xF000) != 0xB000:
            self._refused(path, f"C-STORE status 0x{code:04X}")
            return "kept"
        self._done(path)
        return "sent"

    def _meta(self, path: Path) -> Any:
        """``path``'s file meta information, or None when there is nothing to send: the file
        moved away meanwhile, or is not DICOM (set aside at once: retrying cannot help)."""
        try:
            return read_file_meta_info(path)
        except FileNotFoundError:
            self._state.pop(path.name, None)
        except Exception as err:
            self._set_aside(path, f"unreadable: {type(err).__name__}")
        return None

    def _stow_one(self, stow: StowClient, path: Path) -> str | None:
        """STOW-RS one file: ``stored``, ``refused`` or ``skipped``; None when the server is
        unreachable (the caller makes the file wait, with back-off)."""
        if self._meta(path) is None:
            return "skipped"
        answer = stow.store(path)
        if answer.outcome == "stored":
            self._done(path)
        elif answer.outcome == "refused":
            self._refused(path, answer.reason)
        else:
            return None
        return answer.outcome

    def _done(self, path: Path) -> None:
        os.replace(path, self.sent / path.name)
        self._state.pop(path.name, None)
        self.metrics.count("sent")
        received = self.received_ns(path.name.split(".")[0]) if self.received_ns else None
        if received:
            self.metrics.latency("sent", (time.time_ns() - received) / 1e9)
