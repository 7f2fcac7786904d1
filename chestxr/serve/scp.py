"""The DICOM Storage SCP: accepts radiographs from known calling AE titles into the spool."""

from __future__ import annotations

import logging
import queue
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydicom.uid import UID
from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    _config,
    evt,
)
from pynetdicom.sop_class import Verification

from chestxr.serve import file_meta
from chestxr.serve.admission import RADIOGRAPH_SOP_CLASSES
from chestxr.serve.metrics import Metrics
from chestxr.serve.sender import tune
from chestxr.serve.spool import Spool
from chestxr.utils.ids import anonymous_id

log = logging.getLogger(__name__)
ACCEPTED_SOP_CLASSES: tuple[UID, ...] = RADIOGRAPH_SOP_CLASSES
SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000


def make_store_handler(
    spool: Spool, metrics: Metrics, on_stored: Callable[[], None] | None = None
) -> Callable[[Any], int]:
    """The C-STORE handler: the instance is on disk (fsynced) before success is answered."""

    def handle(event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID or "")
        if not uid:
            return CANNOT_UNDERSTAND
        try:
            stored = spool.put(uid, received_file(event))
        except (OSError, ValueError) as err:
            log.error("could not spool %s: %s", anonymous_id(uid, prefix="scan"), err)
            return OUT_OF_RESOURCES
        metrics.count("received" if stored else "duplicates")
        if not stored:
            log.info("duplicate %s ignored (already received)", anonymous_id(uid, prefix="scan"))
        elif on_stored is not None:
            on_stored()
        return SUCCESS

    return handle


def received_file(event: Any) -> bytes:
    """A C-STORE request's data set as a DICOM file: pynetdicom's ``event.encoded_dataset()``
    byte for byte (the data set as sent, behind the file meta pynetdicom makes for it), with the
    file meta encoded directly (:mod:`chestxr.serve.file_meta`: 0.65 -> 0.10 ms per instance of
    512 px, medians of five runs of 256 each way). What that cannot encode (a UID outside ASCII,
    say) goes through pynetdicom's own."""
    request = event.request
    try:
        header = file_meta.file_header(
            [
                (file_meta.VERSION, "OB", b"\x00\x01"),
                (file_meta.SOP_CLASS, "UI", str(request.AffectedSOPClassUID or "")),
                (file_meta.SOP_INSTANCE, "UI", str(request.AffectedSOPInstanceUID or "")),
                (file_meta.TRANSFER_SYNTAX, "UI", str(event.context.transfer_syntax)),
                (file_meta.IMPLEMENTATION_CLASS, "UI", PYNETDICOM_IMPLEMENTATION_UID),
                (file_meta.IMPLEMENTATION_VERSION, "SH", PYNETDICOM_IMPLEMENTATION_VERSION),
            ]
        )
    except ValueError:
        return event.encoded_dataset()
    with request.DataSet.getbuffer() as data:  # one copy of the data set, not two
        return header + data


MAX_PDU_BYTES = 4 * 1024 * 1024  # the largest PDU we accept (declared at association)
ACCEPTOR_IDLE_WAIT_S = 0.01  # an accepted association's reactor, idle: one turn per ~11 ms, not 1


def quiet_reactor(assoc: Any, wait_s: float = ACCEPTOR_IDLE_WAIT_S) -> None:
    """Let an accepted association's reactor wait for the next request instead of polling.

    pynetdicom's acceptor reactor sleeps 1 ms, then asks its DIMSE provider for a message
    without waiting (``get_msg(block=False)``), over and over while the association is open:
    ~1000 wake-ups a second each, on the core the model shares. Here that call waits up to
    ``wait_s`` on the provider's queue, which wakes it the moment a request is complete (or the
    peer aborts: pynetdicom puts a marker on the queue then), so requests are served as soon as
    before; a release from the peer, the network timeout and a local shutdown of the connection
    are noticed up to ``wait_s`` later. Four idle associations cost the node's SCP 0.10 of a
    CPU core as pynetdicom leaves them and 0.04 with this (two runs of 9 s each way).

    Only for associations the node accepts and whose only requests are sent by handlers running
    in the reactor itself (the node's: it answers C-STORE and C-ECHO and sends nothing on them).
    A thread that sends on an association pauses its reactor first; pynetdicom's pause has a
    window in which the reactor may still be asking for a message, and a reactor waiting there
    could take that thread's reply. So requestor associations are left as they are, as is one
    without pynetdicom's provider queue (another pynetdicom version); a call that asks to block,
    or passes anything more, goes to pynetdicom's own ``get_msg``.
    """
    dimse = getattr(assoc, "dimse", None)
    messages = getattr(dimse, "msg_queue", None)
    if not getattr(assoc, "is_acceptor", False) or not isinstance(messages, queue.Queue):
        return
    get_msg = dimse.get_msg

    def get_msg_waiting(block: bool = False, *args: Any, **kwargs: Any) -> Any:
        if block or args or kwargs:
            return get_msg(block, *args, **kwargs)
        try:
            return messages.get(block=True, timeout=wait_s)
        except queue.Empty:
            return None, None

    dimse.get_msg = get_msg_waiting


def log_each_message() -> bool:
    """Bind pynetdicom's per-message log handlers (each request and response at INFO, every PDU
    and DIMSE message decoded at DEBUG) to the associations made from now on only when the
    ``pynetdicom`` logger is at DEBUG; returns whether they are bound.

    Unbound, pynetdicom still logs associations accepted, rejected and aborted, and every error.
    Bound, they format their lines for every PDU whatever the log level (and the DEBUG ones name
    each instance's UIDs): ~0.3 ms of CPU per instance received (medians of six interleaved
    runs of 256 instances each way).
    """
    on = logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG)
    _config.LOG_HANDLER_LEVEL = "standard" if on else "none"
    return on


def make_ae(ae_title: str, allowed_calling: Sequence[str]) -> AE:
    """An AE accepting the radiograph storage SOP classes (any transfer syntax) and C-ECHO,
    from ``allowed_calling`` AE titles only (an empty list would accept anyone: refused).

    Raises:
        ValueError: no allowed calling AE title.
    """
    allowed = [str(a).strip() for a in allowed_calling if str(a).strip()]
    if not allowed:
        raise ValueError("allowed_calling_ae_titles is empty: list the modalities/PACS that send")
    ae = AE(ae_title=ae_title)
    ae.require_calling_aet = allowed
    ae.require_called_aet = True  # a sender must address us by our AE title
    for sop in ACCEPTED_SOP_CLASSES:
        ae.add_supported_context(sop, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    ae.maximum_associations = 16
    # receive an instance in few PDUs: pynetdicom reads one PDU per turn of its reactor (with a
    # 1 ms sleep between turns), so a 512 px CR in the default 16 KB PDUs took ~40 turns
    ae.maximum_pdu_size = MAX_PDU_BYTES
    return ae


def _existing(path: str | None, key: str) -> str | None:
    """``path`` if it names a file; None for unset; else an error naming the config key."""
    if path in (None, ""):
        return None
    if not Path(path).expanduser().is_file():
        raise FileNotFoundError(f"{key}: no such file {path}")
    return str(Path(path).expanduser())


def tls_context(cert: str | None, key: str | None, ca: str | None = None) -> ssl.SSLContext:
    """The SCP's server TLS context; with ``ca``, clients must present a certificate signed by it.

    Raises:
        FileNotFoundError: a file that is not there, named with its key in ``conf/serve.yaml``.
        ValueError: a certificate without its key or the other way round.
    """
    cert_file, key_file = _existing(cert, "tls.cert"), _existing(key, "tls.key")
    if not (cert_file and key_file):
        raise ValueError("tls.cert and tls.key are both needed for DICOM TLS on the SCP")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certfile=cert_file, keyfile=key_file)
    ca_file = _existing(ca, "tls.ca")
    if ca_file:
        ctx.load_verify_locations(cafile=ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def destination_tls_context(
    ca: str | None = None, cert: str | None = None, key: str | None = None
) -> ssl.SSLContext | None:
    """The TLS context for sending to the PACS, or None (plain DICOM) when ``ca`` is unset.

    The PACS's certificate must be signed by ``ca`` and name the host the node connects to
    (``destination.host``, as DNS name or IP address); ``cert``/``key`` are the node's own
    certificate, for a PACS that requires one.

    Raises:
        FileNotFoundError: a file that is not there, named with its ``destination.tls`` key.
        ValueError: ``cert`` without ``key`` (or the other way round), or either without ``ca``.
    """
    ca_file = _existing(ca, "destination.tls.ca")
    cert_file = _existing(cert, "destination.tls.cert")
    key_file = _existing(key, "destination.tls.key")
    if bool(cert_file) != bool(key_file):
        raise ValueError("destination.tls.cert and destination.tls.key go together")
    if not ca_file:
        if cert_file:
            raise ValueError("destination.tls.ca is needed to verify the PACS (TLS is off)")
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    if cert_file:
        ctx.load_cert_chain(certfile=cert_file, keyfile=key_file)
    return ctx


def start_scp(
    ae: AE,
    bind: str,
    port: int,
    handler: Callable[[Any], int],
    ssl_context: ssl.SSLContext | None = None,
) -> Any:
    """Start the SCP in background threads; returns the server (``.shutdown()`` stops it)."""
    server = ae.start_server(
        (bind, port),
        block=False,
        evt_handlers=[
            (evt.EVT_C_STORE, handler),
            (evt.EVT_CONN_OPEN, lambda event: tune(event.assoc)),  # answers leave at once
            (evt.EVT_CONN_OPEN, lambda event: quiet_reactor(event.assoc)),
        ],
        ssl_context=ssl_context,
    )
    log.info(
        "DICOM SCP %s listening on %s:%d%s",
        ae.ae_title,
        bind,
        port,
        " (TLS)" if ssl_context else "",
    )
    return server
