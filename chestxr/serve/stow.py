"""Results to a DICOMweb server by STOW-RS (PS3.18 10.5): one instance per request, the file's
bytes as written, over kept-alive HTTP(S) connections (a pool: each request takes an idle one or
opens one, and gives it back).

The file is sent as it is on disk (a ``multipart/related; type="application/dicom"`` body of one
part), never decoded and encoded again; ``dicomweb-client``'s ``store_instances`` takes data sets
and encodes them anew, which cost ~11 ms of CPU per SR here against ~1 ms for this. Each answer
is sorted into what the sender does next:

- ``stored``: 200, or 202 without the instance in the Failed SOP Sequence;
- ``refused`` (the server will not take this file; retried up to ``retry.max_rejections``):
  409, other 4xx except 401/403/408/429, or the instance in the Failed SOP Sequence;
- ``unavailable`` (the server or the way to it; retried with back-off without end): no
  connection, timeouts, 5xx, 401/403 (credentials are the node's, not the file's), 408, 429.
"""

from __future__ import annotations

import http.client
import json
import queue
import ssl
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

Outcome = Literal["stored", "refused", "unavailable"]
FAILED_SOP_SEQUENCE = "00081198"
FAILURE_REASON = "00081197"
_RETRY_STATUSES = {401, 403, 408, 429}


@dataclass(frozen=True)
class Answer:
    """What the server said about one instance: the outcome and a reason for the log."""

    outcome: Outcome
    reason: str


class StowClient:
    """STOW-RS to ``url`` (the DICOMweb root, e.g. ``https://pacs/dicom-web``).

    Args:
        url: the service's root; instances are POSTed to ``{url}/studies``.
        tls: the TLS context for an ``https`` URL (None: the system's trusted CAs).
        headers: extra request headers (e.g. ``Authorization``).
        timeout_s: connect and read timeout.

    Raises:
        ValueError: a URL that is not ``http(s)://host[:port]/...``.
    """

    def __init__(
        self,
        url: str,
        tls: ssl.SSLContext | None = None,
        headers: dict[str, str] | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.url = url
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"destination.stow_url must be http(s)://host[:port]/..., not {url!r}")
        self.scheme, self.host, self.port = parts.scheme, parts.hostname, parts.port
        self.path = parts.path.rstrip("/") + "/studies"
        self.tls = tls if tls is not None else ssl.create_default_context()
        self.headers = dict(headers or {})
        self.timeout_s = timeout_s
        self._idle: queue.LifoQueue[http.client.HTTPConnection] = queue.LifoQueue()

    def _new(self) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=self.timeout_s, context=self.tls
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)

    def _take(self) -> http.client.HTTPConnection:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            return self._new()

    def close(self) -> None:
        """Close the idle connections (new ones are opened when needed)."""
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return

    def store(self, path: Path) -> Answer:
        """POST one DICOM file; never raises for what the server or network does."""
        data = Path(path).read_bytes()
        boundary = uuid.uuid4().hex
        body = b"".join(
            (
                f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(),
                data,
                f"\r\n--{boundary}--\r\n".encode(),
            )
        )
        headers = {
            **self.headers,
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
            "Content-Length": str(len(body)),
        }
        conn = self._take()
        for attempt in (1, 2):  # a kept-alive connection the server closed meanwhile: once more
            try:
                conn.request("POST", self.path, body=body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException) as err:
                conn.close()
                if attempt == 2 or isinstance(err, TimeoutError):
                    return Answer("unavailable", f"{type(err).__name__}: {err}")
                conn = self._new()
                continue
            if response.will_close:  # the server ends the connection (Connection: close, HTTP/1.0)
                conn.close()
            else:
                self._idle.put(conn)
            return judge(response.status, payload)
        return Answer("unavailable", "no answer")  # not reached


def judge(status: int, payload: bytes) -> Answer:
    """The outcome of a one-instance STOW-RS answer (HTTP status and body)."""
    if status in (200, 202):
        failed = _failed_items(payload)
        if failed:
            return Answer("refused", f"HTTP {status}, failed: {failed}")
        return Answer("stored", f"HTTP {status}")
    if status in _RETRY_STATUSES or status >= 500:
        return Answer("unavailable", f"HTTP {status}")
    if 400 <= status < 500:
        return Answer("refused", f"HTTP {status}: {_failed_items(payload) or 'refused'}")
    return Answer("unavailable", f"HTTP {status}")


def _failed_items(payload: bytes) -> str:
    """The failure reasons of a STOW-RS JSON answer's Failed SOP Sequence ('' if none)."""
    try:
        doc = json.loads(payload or b"{}")
    except ValueError:
        return ""
    if isinstance(doc, list):
        doc = doc[0] if doc and isinstance(doc[0], dict) else {}
    if not isinstance(doc, dict):
        return ""
    items = (doc.get(FAILED_SOP_SEQUENCE) or {}).get("Value") or []
    reasons = []
    for item in items:
        value = ((item or {}).get(FAILURE_REASON) or {}).get("Value") or ["?"]
        reasons.append(f"0x{int(value[0]):04X}" if isinstance(value[0], int) else str(value[0]))
    return ", ".join(reasons)
