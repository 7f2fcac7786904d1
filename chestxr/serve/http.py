"""The HTTP face for non-DICOM callers (standard library only).

``POST /score`` with a DICOM or PNG/JPEG body returns the JSON result (or 422 with the reason);
``GET /health`` says whether the node's threads are running (503 when one has stopped);
``GET /metrics`` gives the counters and latency percentiles.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from chestxr.io import RadiographReadError
from chestxr.serve import adapter
from chestxr.serve.admission import NotScorable, check_frontal_chest
from chestxr.serve.metrics import Metrics
from chestxr.serve.worker import Scorer

log = logging.getLogger(__name__)
MAX_BODY = 256 * 1024 * 1024


def score_bytes(scorer: Scorer, data: bytes, scratch: Path) -> dict[str, Any]:
    """Score one uploaded file.

    Raises:
        NotScorable: the file cannot be read or is not a frontal chest radiograph (a DICOM's
            header says so: :func:`chestxr.serve.admission.check_frontal_chest`).
    """
    with tempfile.NamedTemporaryFile(dir=scratch, suffix=".upload") as f:
        f.write(data)
        f.flush()
        try:  # a DICOM (with or without preamble) has its header checked first
            header = adapter.dicom_header(f.name)
        except RadiographReadError as err:
            raise NotScorable(f"unreadable: {adapter.read_error_reason(err)}") from err
        if header is not None:
            check_frontal_chest(header)
        image = scorer.prepare(Path(f.name))
    prob, _, _ = scorer.score(image[None])
    info = scorer.info
    return {
        "outputs": scorer.outputs(prob[0]),
        "model_name": info["model_name"],
        "model_version": info["model_version"],
        "config_hash": info["config_hash"],
        "config_hash_source": info["config_hash_source"],
        "research_use_only": True,
    }


def make_server(
    bind: str,
    port: int,
    scorer: Scorer,
    metrics: Metrics,
    scratch: Path,
    extra: Any = None,
    alive: Any = None,
) -> ThreadingHTTPServer:
    """The HTTP server (not yet serving).

    ``extra()`` adds fields to ``/metrics``; ``alive()`` maps thread names to whether they run,
    and ``/health`` answers 503 ``"status": "degraded"`` naming any that has stopped.
    """
    scratch.mkdir(parents=True, exist_ok=True)

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, code: int, body: dict[str, Any]) -> None:
            data = (json.dumps(body, allow_nan=False) + "\n").encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                threads = alive() if alive else {}
                stopped = sorted(name for name, running in threads.items() if not running)
                body = {
                    "status": "degraded" if stopped else "ok",
                    "model_version": scorer.info["model_version"],
                    "threads": threads,
                }
                if stopped:
                    body["stopped"] = stopped
                self._reply(503 if stopped else 200, body)
            elif self.path == "/metrics":
                self._reply(200, metrics.snapshot(**(extra() if extra else {})))
            else:
                self._reply(404, {"error": f"unknown path {self.path!r}"})

        def do_POST(self) -> None:
            if self.path not in ("/score", "/"):
                self._reply(404, {"error": f"unknown path {self.path!r}; POST to /score"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY:
                self._reply(400, {"error": f"body length {length} not in 1..{MAX_BODY}"})
                return
            data = self.rfile.read(length)
            metrics.count("received")
            try:
                result = score_bytes(scorer, data, scratch)
            except NotScorable as err:
                metrics.count("failed")
                self._reply(422, {"error": str(err)})
                return
            metrics.count("scored")
            self._reply(200, result)

        def log_message(self, format: str, *args: Any) -> None:  # no client data in logs
            log.debug("http %s %s", self.command, self.path)

    return ThreadingHTTPServer((bind, port), Handler)


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    """Run ``server`` in a daemon thread."""
    thread = threading.Thread(target=server.serve_forever, name="chestxr-http", daemon=True)
    thread.start()
    return thread
