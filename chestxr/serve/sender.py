"""Results to the PACS: C-STORE of the outbox's files with retries and exponential back-off.

A file stays in ``outbox/`` until the destination has accepted it, then moves to ``sent/``; when
the destination is down nothing is lost, and everything is sent once it is back (also after a
restart of the node). Connection failures are retried without end (the delay is capped by
``backoff_max_s``); a file the destination *refuses* (a C-STORE failure status) ``max_rejections``
times moves to ``rejected/`` with a warning, so that one bad result cannot block the queue; a
file that cannot be read as DICOM at all moves there at once (the reason logged, no identifiers).
No error in one file stops the sender's thread.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
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


@dataclass
class Sender:
    """Sends the outbox to ``destination`` until stopped.

    Args:
        outbox: folder of result files waiting to be sent.
        destination: the PACS, or None to keep results in the output folder only.
        metrics: counters to update.
        received_ns: maps a file's spool key to its reception time, for the latency.
        backoff_s: first retry delay; doubled per failure up to ``backoff_max_s``.
        max_per_association: files sent over one association.
        max_rejections: refusals by the destination before a file moves to ``rejected/``
            (``retry.max_rejections`` in ``conf/serve.yaml``).
    """

    outbox: Path
    destination: Destination | None
    metrics: Metrics
    max_rejections: int
    received_ns: object = None
    backoff_s: float = 1.0
    backoff_max_s: float = 60.0
    timeout_s: float = 10.0
    max_per_association: int = 64
    poll_s: float = 0.1
    _state: dict[str, _Backoff] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.outbox = Path(self.outbox)
        self.sent = self.outbox.parent / "sent"
        self.rejected = self.outbox.parent / "rejected"
        for folder in (self.outbox, self.sent, self.rejected):
            folder.mkdir(parents=True, exist_ok=True)
        self.wake = threading.Event()

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
        """Loop: send what is due, sleep otherwise."""
        if self.destination is None:
            log.info("no destination configured: results stay in %s", self.outbox)
            return
        try:
            self._run(stop)
        finally:
            if self.destination.stow is not None:
                self.destination.stow.close()

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            now = time.monotonic()
            due = [p for p in self.waiting() if self._state.get(p.name, _Backoff()).next_try <= now]
            if not due:
                self.wake.wait(self.poll_s)
                self.wake.clear()
                continue
            n = max(1, int(self.destination.associations))
            batch = due[: self.max_per_association * n]
            chunks = [batch[i::n] for i in range(min(n, len(batch)))]
            if len(chunks) == 1:
                self._send_logged(chunks[0])
            else:  # one association per chunk, all at once; files are never in two chunks
                threads = [threading.Thread(target=self._send_logged, args=(c,)) for c in chunks]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()

    def _send_logged(self, files: list[Path]) -> None:
        try:
            self.send(files)
        except Exception as err:  # a bug or an unforeseen error must not end the thread
            log.error("sending failed: %s: %s", type(err).__name__, err)
            self._failed(files, type(err).__name__)

    def _failed(self, files: list[Path], why: str) -> None:
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

    def send(self, files: list[Path]) -> int:
        """Send ``files`` over one association (or one STOW-RS connection); returns how many
        were accepted."""
        dest = self.destination
        if dest is None:
            return 0
        if dest.stow is not None:
            return self._send_stow(dest.stow, files)
        ae = AE(ae_title=dest.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        for sop in RESULT_SOP_CLASSES:
            ae.add_requested_context(sop, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        tls = (dest.tls, dest.host) if dest.tls is not None else None
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=tls)
        if not assoc.is_established:
            self._failed(files, f"no association with {dest}")
            return 0
        ok = 0
        # a file in a transfer syntax the PACS accepted is sent as its bytes (pynetdicom streams
        # the file), not decoded and encoded again: for an SR that was most of the sending's cost
        _config.STORE_SEND_CHUNKED_DATASET = True
        as_is = {
            (str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts
        }
        try:
            tune(assoc)
            for path in files:
                meta = self._meta(path)
                if meta is None:
                    continue
                key = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
                try:
                    what: Path | Dataset = path if key in as_is else pydicom.dcmread(path)
                except FileNotFoundError:  # moved away meanwhile: nothing to send
                    self._state.pop(path.name, None)
                    continue
                except Exception as err:  # truncated after its header...: retrying cannot help
                    self._set_aside(path, f"unreadable: {type(err).__name__}")
                    continue
                try:
                    status = assoc.send_c_store(what)
                except (OSError, RuntimeError) as err:  # the transport
                    self._failed([path], f"{type(err).__name__}: {err}")
                    if not assoc.is_established:
                        break
                    continue
                except Exception as err:  # this file (no accepted context for it, bad encoding)
                    self._refused(path, type(err).__name__)
                    if not assoc.is_established:
                        break
                    continue
                code = getattr(status, "Status", None)
                if code is None:  # no answer (timeout, aborted): a transport failure
                    self._failed([path], "no C-STORE response")
                    continue
                if code != 0x0000 and (code & 0xF000) != 0xB000:
                    self._refused(path, f"C-STORE status 0x{code:04X}")
                    continue
                self._done(path)
                ok += 1
        finally:
            if assoc.is_established:
                assoc.release()
        return ok

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

    def _send_stow(self, stow: StowClient, files: list[Path]) -> int:
        """STOW-RS ``files`` one by one; once the server is unreachable the rest wait too."""
        ok = 0
        for i, path in enumerate(files):
            if self._meta(path) is None:
                continue
            answer = stow.store(path)
            if answer.outcome == "stored":
                self._done(path)
                ok += 1
            elif answer.outcome == "refused":
                self._refused(path, answer.reason)
            else:
                self._failed(files[i:], f"{self.destination}: {answer.reason}")
                break
        return ok

    def _done(self, path: Path) -> None:
        os.replace(path, self.sent / path.name)
        self._state.pop(path.name, None)
        self.metrics.count("sent")
        received = self.received_ns(path.name.split(".")[0]) if self.received_ns else None
        if received:
            self.metrics.latency("sent", (time.time_ns() - received) / 1e9)
