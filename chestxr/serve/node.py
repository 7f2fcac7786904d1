"""The whole node: spool, scorer, workers, sender, DICOM SCP and HTTP face, started together."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from chestxr.serve import scp
from chestxr.serve.http import make_server, serve_in_thread
from chestxr.serve.metrics import Metrics
from chestxr.serve.sender import Destination, Sender
from chestxr.serve.spool import Spool
from chestxr.serve.stow import StowClient
from chestxr.serve.worker import Scorer, Worker
from chestxr.utils.allocator import keep_freed_memory

log = logging.getLogger(__name__)
# highdicom logs the source UIDs it copies at INFO: no identifiers in our logs
logging.getLogger("highdicom").setLevel(logging.WARNING)


def _destination(dest: Any, our_ae_title: str) -> Destination | None:
    """The results' destination from the ``destination`` config: C-STORE to ``host`` or, with
    ``stow_url``, STOW-RS; None (results kept on disk) when neither is set."""
    stow_url = dest.get("stow_url")
    if not (dest.get("host") or stow_url):
        return None
    if dest.get("host") and stow_url:
        raise ValueError(
            "set destination.host (results by C-STORE) or destination.stow_url (by STOW-RS), "
            "not both"
        )
    tls = scp.destination_tls_context(**(dest.get("tls") or {}))
    headers = {str(k): str(v) for k, v in (dest.get("stow_headers") or {}).items()}
    return Destination(
        dest.get("host") or "",
        int(dest.get("port") or 0),
        dest.get("ae_title") or "",
        our_ae_title,
        tls=tls,
        associations=int(dest.get("associations", 1)),
        stow=StowClient(stow_url, tls, headers) if stow_url else None,
    )


class Node:
    """A running chestxr DICOM AI node.

    Args:
        cfg: the ``serve`` config (see ``conf/serve.yaml``) as a mapping.
    """

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        if cfg["keep_freed_memory"]:  # the model runs in a worker thread: see keep_freed_memory
            keep_freed_memory()
        scp.log_each_message()  # before any association, in or out
        state = Path(cfg["state_dir"]).expanduser()
        self.spool = Spool(state / "spool")
        self.outbox = state / "results" / "outbox"
        self.metrics = Metrics()
        self.scorer = Scorer(cfg["ckpt_path"], cams=cfg["cams"], cam_method=cfg["cam_method"])
        self.workers = [
            Worker(self.spool, self.scorer, self.outbox, self.metrics, batch_size=cfg["batch_size"])
            for _ in range(int(cfg["workers"]))
        ]
        dest = cfg.get("destination") or {}
        self.sender = Sender(
            self.outbox,
            _destination(dest, cfg["ae_title"]),
            self.metrics,
            received_ns=self._received_ns,
            backoff_s=float(cfg["retry"]["backoff_s"]),
            backoff_max_s=float(cfg["retry"]["backoff_max_s"]),
            max_rejections=int(cfg["retry"]["max_rejections"]),
        )
        tls = cfg.get("tls") or {}
        # any TLS key set turns TLS on (a ca alone is refused, never ignored); config errors
        # surface here, before any thread
        on = any(tls.get(k) for k in ("cert", "key", "ca"))
        self._tls = scp.tls_context(tls.get("cert"), tls.get("key"), tls.get("ca")) if on else None
        self.stop_event = threading.Event()
        self._threads: list[threading.Thread] = []
        self._scp: Any = None
        self._http: Any = None

    def _received_ns(self, key: str) -> int | None:
        rec = self.spool.record(key)
        return rec.get("received_ns") if rec else None

    def _wake(self) -> None:
        for w in self.workers:
            w.wake.set()

    def extra_metrics(self) -> dict[str, Any]:
        """Spool and outbox sizes for ``/metrics``."""
        counts = self.spool.counts()
        return {
            "pending": counts["pending"],
            "spool_done": counts["done"],
            "spool_failed": counts["failed"],
            "outbox": len(self.sender.waiting()),
        }

    def alive(self) -> dict[str, bool]:
        """Whether each of the node's threads is running, by thread name (for ``/health``).

        The sender counts as running when no destination is configured (it has nothing to do).
        """
        state = {t.name: t.is_alive() for t in self._threads}
        if self.sender.destination is None:
            state.pop("chestxr-sender", None)
        return state

    def start(self) -> Node:
        """Start every part (returns at once)."""
        for i, w in enumerate(self.workers):
            self._start(w.run, f"chestxr-worker-{i}")
        self._start(self.sender.run, "chestxr-sender")
        cfg = self.cfg
        ae = scp.make_ae(cfg["ae_title"], list(cfg["allowed_calling_ae_titles"]))
        handler = scp.make_store_handler(self.spool, self.metrics, self._wake)
        self._scp = scp.start_scp(ae, cfg["bind"], int(cfg["port"]), handler, self._tls)
        if cfg.get("http_port"):
            self._http = make_server(
                cfg["bind"],
                int(cfg["http_port"]),
                self.scorer,
                self.metrics,
                Path(cfg["state_dir"]).expanduser() / "http",
                self.extra_metrics,
                self.alive,
            )
            serve_in_thread(self._http)
            log.info("HTTP on %s:%d (/score, /health, /metrics)", cfg["bind"], cfg["http_port"])
        return self

    def _start(self, target: Any, name: str) -> None:
        t = threading.Thread(target=target, args=(self.stop_event,), name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        """Stop accepting, finish the current batch, stop the threads."""
        if self._scp is not None:
            self._scp.shutdown()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        self.stop_event.set()
        for t in self._threads:
            t.join(timeout=30)
