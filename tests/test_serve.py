"""The DICOM AI node's parts: spool, AE title check, duplicates, bad files, results, HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from chestxr.models.module import ChestXRClassifier
from chestxr.serve.metrics import Metrics
from chestxr.serve.sender import COMPREHENSIVE_3D_SR, RESULT_SOP_CLASSES
from chestxr.serve.spool import Item, Spool, spool_key
from tests.helpers.checkpoints import save_classifier

CR = "1.2.840.10008.5.1.4.1.1.1"
OPT = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3}


def make_checkpoint(
    path: Path,
    threshold: float = 0.5,
    seed: int = 0,
    summary: dict | None = None,
    image_size: int = 64,
) -> Path:
    """A chestxr checkpoint (random weights, small by default, a stored operating point);
    ``summary`` is the run summary chestxr training stores under ``"chestxr"``."""
    torch.manual_seed(seed)
    model = ChestXRClassifier(
        task="binary",
        classes=["normal", "opacity"],
        preprocess={"image_size": image_size},
        optimizer=OPT,
    )
    model.thresholds.fill_(threshold)
    return save_classifier(model, path, **({"chestxr": summary} if summary is not None else {}))


def make_radiograph(
    path: Path, *, seed: int = 0, study_uid: str | None = None, size: int = 96, **elements: object
) -> Path:
    """A CR chest radiograph (blobs on noise) with a patient module, written to ``path``;
    ``elements`` set (or, given None, remove) attributes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    img = 1500 + 800 * np.exp(-((xx - 0.3) ** 2 + (yy - 0.5) ** 2) / 0.02)
    img += 800 * np.exp(-((xx - 0.7) ** 2 + (yy - 0.5) ** 2) / 0.02) + rng.normal(0, 50, img.shape)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CR
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = CR
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = f"P-{seed}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyDate, ds.StudyTime = "20240101", "120000"
    ds.AccessionNumber = f"A{seed}"
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, 1
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.SamplesPerPixel = 1
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.clip(img, 0, 4095).astype("<u2").tobytes()
    for keyword, value in elements.items():
        if value is None:
            ds.pop(keyword, None)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


# ----------------------------------------------------------------------------- spool


def test_spool_put_is_atomic_idempotent_and_survives_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    assert spool.put("1.2.3", b"first") is True
    assert spool.put("1.2.3", b"second") is False  # same SOP Instance UID: kept once
    assert spool.put("1.2.4", b"other") is True
    files = sorted(p.name for p in (tmp_path / "spool" / "pending").iterdir())
    assert files == sorted(f"{spool_key(u)}.dcm" for u in ("1.2.3", "1.2.4"))  # no temp left
    assert (tmp_path / "spool/pending" / f"{spool_key('1.2.3')}.dcm").read_bytes() == b"first"
    # a worker claims one and crashes before finishing; the other was finished
    (held,) = [i for i in spool.claim(8) if i.key == spool_key("1.2.3")]
    other = next(i for i in spool.pending() if i.key == spool_key("1.2.4"))
    spool.finish(other, {"reason": "x"}, ok=False)
    restarted = Spool(tmp_path / "spool")
    assert [i.key for i in restarted.claim(8)] == [held.key]  # pending again after a restart
    assert restarted.state(spool_key("1.2.4")) == "failed"
    assert restarted.put("1.2.4", b"again") is False  # a finished instance is not taken again


def test_spool_recover_drops_pending_whose_outcome_is_recorded(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.put("9.9", b"x")
    (item,) = spool.claim(1)
    # crash after the record was written but before the pending file was removed
    (tmp_path / "done" / f"{item.key}.json").write_text('{"ok": 1}')
    assert Spool(tmp_path).recover() == 0
    assert not item.path.exists()


def test_spool_claims_a_backlog_oldest_first_without_reading_the_folder_per_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path)
    uids = [f"1.2.{i}" for i in range(30)]
    for uid in uids:
        assert spool.put(uid, uid.encode())
    scans = []
    real = Spool.pending
    monkeypatch.setattr(Spool, "pending", lambda self: scans.append(1) or real(self))
    first = spool.claim(8)
    assert [i.path.read_bytes().decode() for i in first] == uids[:8]  # oldest first
    spool.release(first[0])  # given back unfinished: first in line again
    second = spool.claim(8)
    assert [i.key for i in second] == [first[0].key] + [spool_key(u) for u in uids[8:15]]
    # one taken away by hand, one finished without a claim: neither is handed out
    spool._path("pending", spool_key(uids[15])).unlink()
    unclaimed = Item(spool_key(uids[16]), spool._path("pending", spool_key(uids[16])), 0)
    spool.finish(unclaimed, {"reason": "x"}, ok=False)
    rest = [i.key for i in spool.claim(100)]
    assert rest == [spool_key(u) for u in uids[17:]]
    assert scans == []  # a batch costs the same with a large backlog: pending/ not read for it
    # with nothing queued, a file put into pending/ by hand is found
    (tmp_path / "pending" / f"{spool_key('7.7')}.dcm").write_bytes(b"by hand")
    assert [i.key for i in spool.claim(8)] == [spool_key("7.7")]
    assert scans == [1]


def test_spool_hands_each_instance_to_one_worker_while_others_put(tmp_path: Path) -> None:
    """Threads putting, claiming, releasing and finishing at once: every instance is held by
    one claimer at a time and ends done exactly once."""
    spool = Spool(tmp_path)
    n = 400
    held: set[str] = set()
    done: list[str] = []
    lock = threading.Lock()
    errors: list[str] = []
    released: set[str] = set()

    def putter(start: int) -> None:
        for i in range(start, n, 2):
            spool.put(f"1.2.{i}", b"x")

    puts_done = threading.Event()

    def worker() -> None:
        idle = 0
        while idle < 50:
            items = spool.claim(4)
            if not items:
                # idle turns count once every put is done (putters may stall on a loaded machine)
                idle = idle + 1 if puts_done.is_set() else 0
                time.sleep(0.002)
                continue
            idle = 0
            with lock:
                for item in items:
                    if item.key in held:
                        errors.append(f"{item.key} held twice")
                    held.add(item.key)
            for k, item in enumerate(items):
                with lock:
                    held.discard(item.key)
                if k == 0 and item.key not in released:
                    released.add(item.key)
                    spool.release(item)  # given back once: claimed again later
                else:
                    spool.finish(item, {"ok": 1}, ok=True)
                    with lock:
                        done.append(item.key)

    putters = [threading.Thread(target=putter, args=(s,)) for s in (0, 1)]
    workers = [threading.Thread(target=worker) for _ in range(3)]
    for t in putters + workers:
        t.start()
    for t in putters:
        t.join()
    puts_done.set()
    for t in workers:
        t.join()
    assert errors == []
    assert sorted(done) == sorted(spool_key(f"1.2.{i}") for i in range(n))  # each once
    assert spool.counts() == {"pending": 0, "done": n, "failed": 0}


def test_spool_refuses_an_instance_without_uid(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="SOP Instance UID"):
        Spool(tmp_path).put("  ", b"x")


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_a_received_file_is_pynetdicoms_encoded_dataset(tmp_path: Path, syntax: str) -> None:
    """The spooled file is, byte for byte, what pynetdicom's ``encoded_dataset()`` gives for
    the same C-STORE (its file meta written by chestxr's own encoder), and reads back as the
    instance sent."""
    from pynetdicom import AE

    from chestxr.serve import scp

    got: list[tuple[bytes, bytes]] = []

    def handle(event) -> int:
        got.append((scp.received_file(event), event.encoded_dataset()))
        return 0x0000

    port = free_port()
    server = scp.start_scp(scp.make_ae("CHESTXR", ["MODALITY"]), "127.0.0.1", port, handle)
    sources = [make_radiograph(tmp_path / f"s{i}.dcm", seed=i) for i in range(3)]
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CR, syntax)
        assoc = ae.associate("127.0.0.1", port, ae_title="CHESTXR")
        assert assoc.is_established
        try:
            for src in sources:
                assert assoc.send_c_store(pydicom.dcmread(src)).Status == 0
        finally:
            assoc.release()
    finally:
        server.shutdown()
    assert len(got) == 3
    for (ours, theirs), src in zip(got, sources, strict=True):
        assert ours == theirs
        back = pydicom.dcmread(pydicom.filebase.DicomBytesIO(ours))
        assert back.file_meta.TransferSyntaxUID == syntax
        assert back.SOPInstanceUID == pydicom.dcmread(src).SOPInstanceUID


def test_a_received_file_the_encoder_cannot_write_is_pynetdicoms() -> None:
    """A request the direct encoder refuses (no SOP Class UID here) is written by pynetdicom."""
    from types import SimpleNamespace

    from chestxr.serve import scp

    request = SimpleNamespace(AffectedSOPClassUID=None, AffectedSOPInstanceUID="1.2.3")
    event = SimpleNamespace(
        request=request,
        context=SimpleNamespace(transfer_syntax=ExplicitVRLittleEndian),
        encoded_dataset=lambda: b"pynetdicom's",
    )
    assert scp.received_file(event) == b"pynetdicom's"


def test_metrics_percentiles_and_unknown_counter() -> None:
    m = Metrics()
    assert m.snapshot()["latency_scored_p50_s"] is None
    for v in range(1, 101):
        m.latency("scored", v / 100)
    snap = m.snapshot(pending=3)
    assert snap["latency_scored_p50_s"] == pytest.approx(0.505)
    assert snap["latency_scored_p95_s"] == pytest.approx(0.9505)
    assert snap["pending"] == 3
    with pytest.raises(KeyError, match="nope"):
        m.count("nope")
    m.count("sent", 2)
    counts = m.counts()
    assert counts == {k: v for k, v in m.snapshot().items() if k in counts}
    assert counts["sent"] == 2 and "latency_scored_p50_s" not in counts
    counts["sent"] = 99  # a copy: the node's counters are not changed through it
    assert m.counts()["sent"] == 2


# ----------------------------------------------------------------------------- the node


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("model") / "model.ckpt")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_config(ckpt: Path, state: Path, **over: object) -> dict:
    cfg = {
        "ckpt_path": str(ckpt),
        "state_dir": str(state),
        "ae_title": "CHESTXR",
        "bind": "127.0.0.1",
        "port": free_port(),
        "allowed_calling_ae_titles": ["MODALITY"],
        "destination": {"host": None},
        "retry": {"backoff_s": 0.2, "backoff_max_s": 2.0, "max_rejections": 5},
        "batch_size": 4,
        "workers": 1,
        "cams": True,
        "cam_method": "gradcam",
        "keep_freed_memory": True,
        "http_port": free_port(),
        "tls": {},
    }
    cfg.update(over)
    return cfg


def c_store(
    port: int, paths: list[Path], calling: str = "MODALITY", called: str = "CHESTXR"
) -> list[int] | None:
    """Send files with pynetdicom as a modality would; None when the association is refused."""
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    for p in {str(pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID) for p in paths}:
        ae.add_requested_context(p, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return None
    try:
        return [int(assoc.send_c_store(pydicom.dcmread(p)).Status) for p in paths]
    finally:
        assoc.release()


def run_in_thread(sender) -> tuple:
    """Start ``sender.run`` in a thread; returns (the event that stops it, the thread)."""
    stop = threading.Event()
    thread = threading.Thread(target=sender.run, args=(stop,), daemon=True)
    thread.start()
    return stop, thread


def wait_for(cond, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("timed out waiting")
        time.sleep(0.1)


def test_node_scores_once_rejects_unknown_ae_and_bad_files(
    ckpt: Path, tmp_path: Path, caplog
) -> None:
    from chestxr.serve.node import Node

    caplog.set_level("INFO")
    good = [make_radiograph(tmp_path / f"g{i}.dcm", seed=i) for i in range(2)]
    lateral = make_radiograph(tmp_path / "lat.dcm", seed=5, ViewPosition="LL")
    hand = make_radiograph(tmp_path / "hand.dcm", seed=6, BodyPartExamined="HAND")
    broken = make_radiograph(tmp_path / "broken.dcm", seed=7)
    ds = pydicom.dcmread(broken)
    ds.PixelData = ds.PixelData[:100]  # header says 96 x 96, data holds 50 pixels
    ds.save_as(broken, enforce_file_format=True)
    cfg = node_config(ckpt, tmp_path / "state")
    node = Node(cfg).start()
    try:
        assert c_store(cfg["port"], good[:1], calling="INTRUDER") is None  # unknown AE title
        assert c_store(cfg["port"], good[:1], called="OTHER") is None  # not addressed to us
        assert node.metrics.snapshot()["received"] == 0
        statuses = c_store(cfg["port"], [*good, good[0], lateral, hand, broken])
        assert statuses == [0] * 6
        wait_for(
            lambda: (
                node.spool.counts()["pending"] == 0
                and sum(node.spool.counts()[k] for k in ("done", "failed")) == 5
                # the counters follow the spool's record (a moment later, in the worker)
                and node.metrics.snapshot()["scored"] + node.metrics.snapshot()["failed"] == 5
            )
        )
        counts = node.spool.counts()
        assert (counts["done"], counts["failed"]) == (2, 3)
        snap = node.metrics.snapshot()
        assert (snap["received"], snap["duplicates"], snap["scored"]) == (5, 1, 2)
        # one SR and one SC per good instance, in its study, referencing it
        outbox = tmp_path / "state/results/outbox"
        for path in good:
            src = pydicom.dcmread(path)
            key = spool_key(src.SOPInstanceUID)
            sr = pydicom.dcmread(outbox / f"{key}.sr.dcm")
            sc = pydicom.dcmread(outbox / f"{key}.sc.dcm")
            for obj in (sr, sc):
                assert obj.StudyInstanceUID == src.StudyInstanceUID
                assert obj.PatientID == src.PatientID  # the patient module stays (PACS needs it)
            assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
            refs = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
            assert refs[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
            assert sc.BurnedInAnnotation == "YES" and sc.Rows > src.Rows  # banner on top
            record = node.spool.record(key)
            assert record["state"] == "done"
            prob = record["outputs"][0]["probability"]
            assert record["outputs"][0]["decision"] == (prob >= 0.5)
        assert len(list(outbox.glob("*.dcm"))) == 4
        reasons = sorted(
            json.loads(p.read_text())["reason"] for p in (tmp_path / "state/spool/failed").iterdir()
        )
        assert "BodyPartExamined is 'HAND'" in reasons[0]
        assert "ViewPosition is 'LL'" in reasons[1]
        assert reasons[2].startswith("unreadable")
        # the same instance again after scoring: no second result
        assert c_store(cfg["port"], good[:1]) == [0]
        time.sleep(0.5)
        assert len(list(outbox.glob("*.dcm"))) == 4
        # HTTP face
        base = f"http://127.0.0.1:{cfg['http_port']}"
        health = json.load(urllib.request.urlopen(base + "/health"))
        assert health["status"] == "ok"
        req = urllib.request.Request(base + "/score", data=good[1].read_bytes(), method="POST")
        answer = json.load(urllib.request.urlopen(req))
        assert answer["outputs"][0]["probability"] == pytest.approx(prob, abs=1e-5)
        req = urllib.request.Request(base + "/score", data=lateral.read_bytes(), method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req)
        assert err.value.code == 422 and "ViewPosition" in json.load(err.value)["error"]
        metrics = json.load(urllib.request.urlopen(base + "/metrics"))
        assert metrics["failed"] == 4 and metrics["latency_scored_p95_s"] is not None
    finally:
        node.stop()
    # no patient identifiers in the logs
    text = caplog.text
    for path in [*good, lateral, hand, broken]:
        src = pydicom.dcmread(path, stop_before_pixels=True)
        for value in (src.SOPInstanceUID, src.StudyInstanceUID, src.PatientID, "Doe"):
            assert str(value) not in text


# ----------------------------------------------------------------------------- faults


class FakePacs:
    """A pynetdicom Storage SCP that records every result it is sent (the destination's stand-in).

    ``stored`` maps each received SOP Instance UID to (SOP Class UID, the source instance it
    references, how many times it was sent).
    """

    def __init__(self, port: int, max_associations: int = 10) -> None:
        self.port = port
        self.max_associations = max_associations  # more at once are rejected
        self.stored: dict[str, list] = {}
        self._server = None

    def _handle(self, event) -> int:
        ds = event.dataset
        if "SourceImageSequence" in ds:
            source = ds.SourceImageSequence[0].ReferencedSOPInstanceUID
        else:
            seq = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
            source = seq[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        entry = self.stored.setdefault(str(ds.SOPInstanceUID), [str(ds.SOPClassUID), source, 0])
        entry[2] += 1
        return 0x0000

    def start(self, ssl_context=None) -> FakePacs:
        """Listen (over TLS with ``ssl_context``); ``associations`` and ``released`` count the
        associations opened and released by their requestor."""
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt

        self.associations: list[int] = []
        self.released = 0

        def opened(event) -> None:
            self.associations.append(id(event.assoc))

        def released(event) -> None:
            self.released += 1

        ae = AE(ae_title="PACS")
        ae.maximum_associations = self.max_associations
        for sop in RESULT_SOP_CLASSES:
            ae.add_supported_context(sop, ALL_TRANSFER_SYNTAXES)
        self._server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[
                (evt.EVT_C_STORE, self._handle),
                (evt.EVT_ESTABLISHED, opened),
                (evt.EVT_RELEASED, released),
            ],
            ssl_context=ssl_context,
        )
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()

    def results_per_source(self) -> dict[str, dict[str, int]]:
        """For each source instance: how many distinct results of each SOP class arrived."""
        out: dict[str, dict[str, int]] = {}
        for sop_class, source, _ in list(self.stored.values()):  # handlers may be adding
            per = out.setdefault(str(source), {})
            per[sop_class] = per.get(sop_class, 0) + 1
        return out


@contextlib.contextmanager
def node_with_association(ckpt: Path, tmp_path: Path) -> Iterator[tuple[Any, Any, Any]]:
    """A node (CAMs off, no HTTP face) with one C-ECHO association open to it: (the node, the
    modality's end of the association, the node's end); released, if still open, and the node
    stopped on exit."""
    from pynetdicom import AE

    from chestxr.serve.node import Node

    cfg = node_config(ckpt, tmp_path / "state", http_port=None, cams=False)
    node = Node(cfg).start()
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", cfg["port"], ae_title="CHESTXR")
        assert assoc.is_established
        try:
            wait_for(lambda: len(node._scp.active_associations) == 1, timeout=10)
            yield node, assoc, node._scp.active_associations[0]
        finally:
            if assoc.is_established:
                assoc.release()
    finally:
        node.stop()


def test_both_ends_of_the_nodes_associations_are_tuned(ckpt: Path, tmp_path: Path) -> None:
    """TCP_NODELAY and the 5 ms idle poll on what the node accepts and on what it opens."""
    import socket

    from chestxr.serve.sender import DUL_IDLE_POLL_S, tune

    def tuned(assoc) -> bool:
        sock = assoc.dul.socket.socket
        nodelay = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        return bool(nodelay) and assoc.dul._run_loop_delay == DUL_IDLE_POLL_S

    with node_with_association(ckpt, tmp_path) as (_, assoc, accepted):
        assert tuned(accepted)  # the SCP's end
        assert not tuned(assoc)  # pynetdicom's defaults, until tuned as the sender does
        tune(assoc)
        assert tuned(assoc)


def test_an_idle_accepted_association_waits_for_requests_instead_of_polling(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pynetdicom's acceptor reactor asks for the next request every 1 ms (~900 times a second
    here); the node's waits for it (1 s here, to tell a wait that a request ends from one that
    runs out): about one turn a second while idle, every request still answered at once, the
    release soon after the wait."""
    import functools
    import statistics

    from chestxr.serve import scp

    wait_s = 1.0  # long beside a loaded machine's scheduling delays, which the bounds allow for
    if hasattr(scp, "quiet_reactor"):  # the node binds it by name at each connection
        monkeypatch.setattr(
            scp, "quiet_reactor", functools.partial(scp.quiet_reactor, wait_s=wait_s)
        )
    with node_with_association(ckpt, tmp_path) as (node, assoc, accepted):
        get_msg, taken = accepted.dimse.get_msg, []

        def counted(block: bool = False, *args, **kwargs):
            got = get_msg(block, *args, **kwargs)
            taken.append(type(got[1]).__name__)
            return got

        accepted.dimse.get_msg = counted
        wait_for(lambda: taken, timeout=5)  # the wait under way when counting began has ended
        before, start = len(taken), time.perf_counter()
        time.sleep(1.25)
        idle_s, idle_turns = time.perf_counter() - start, len(taken) - before
        assert idle_turns <= idle_s / wait_s + 2, (idle_turns, idle_s)
        round_trips = []
        for _ in range(10):
            start = time.perf_counter()
            assert assoc.send_c_echo().Status == 0x0000
            round_trips.append(time.perf_counter() - start)
        assert taken.count("C_ECHO") == 10  # each echo went through the waiting call
        assert statistics.median(round_trips) < wait_s / 2, round_trips  # not after the wait
        start = time.perf_counter()
        assoc.release()
        assert assoc.is_released and time.perf_counter() - start < wait_s + 3.0
        wait_for(lambda: not node._scp.active_associations, timeout=5)


def test_only_accepted_associations_wait_for_their_next_request() -> None:
    """A requestor's reactor is left polling (a thread sending on it pauses the reactor, and a
    waiting one could take its reply); an acceptor's hands over what arrives, in order, and
    (None, None) once the wait runs out."""
    from pynetdicom import AE
    from pynetdicom.association import Association

    from chestxr.serve.scp import quiet_reactor

    requestor = Association(AE(), "requestor")
    original = requestor.dimse.get_msg
    quiet_reactor(requestor, wait_s=0.05)
    assert requestor.dimse.get_msg == original

    acceptor = Association(AE(), "acceptor")
    quiet_reactor(acceptor, wait_s=0.05)
    acceptor.dimse.msg_queue.put((1, "first"))
    acceptor.dimse.msg_queue.put((3, "second"))
    assert acceptor.dimse.get_msg() == (1, "first")
    assert acceptor.dimse.get_msg(block=False) == (3, "second")
    start = time.perf_counter()
    assert acceptor.dimse.get_msg(False) == (None, None)
    assert time.perf_counter() - start >= 0.04  # it waited


def test_results_queued_while_the_pacs_is_down_arrive_once_it_is_up(
    ckpt: Path, tmp_path: Path
) -> None:
    from chestxr.serve.node import Node

    pacs_port = free_port()
    cfg = node_config(
        ckpt,
        tmp_path / "state",
        destination={"host": "127.0.0.1", "port": pacs_port, "ae_title": "PACS"},
        http_port=None,
        retry={"backoff_s": 0.1, "backoff_max_s": 0.5, "max_rejections": 5},
        cams=False,  # SR only: the Secondary Capture is covered above
    )
    good = [make_radiograph(tmp_path / f"g{i}.dcm", seed=i) for i in range(3)]
    node = Node(cfg).start()
    pacs = FakePacs(pacs_port)
    try:
        assert c_store(cfg["port"], good) == [0, 0, 0]
        outbox = tmp_path / "state/results/outbox"
        # the PACS is down: the results wait in the outbox and the sender keeps failing
        wait_for(lambda: len(list(outbox.glob("*.dcm"))) == 3 and node.spool.counts()["done"] == 3)
        wait_for(lambda: node.metrics.snapshot()["send_errors"] >= 6)  # each tried twice at least
        assert node.metrics.snapshot()["sent"] == 0
        pacs.start()
        wait_for(lambda: not list(outbox.glob("*.dcm")), timeout=30)
        wait_for(lambda: node.metrics.snapshot()["sent"] >= 3)  # counted after the file moves
        time.sleep(0.5)  # (room for a duplicate send, which the counts below would show)
        per_source = pacs.results_per_source()
        sources = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in good}
        assert set(per_source) == sources
        for counts in per_source.values():
            assert counts == {COMPREHENSIVE_3D_SR: 1}  # one SR per source
        assert all(n == 1 for _, _, n in pacs.stored.values())  # each sent once
        assert node.metrics.snapshot()["sent"] == 3
        assert len(list((tmp_path / "state/results/sent").glob("*.dcm"))) == 3
    finally:
        node.stop()
        pacs.stop()


def test_a_result_the_pacs_keeps_refusing_is_set_aside(ckpt: Path, tmp_path: Path) -> None:
    from chestxr.serve.sender import Destination, Sender

    pacs_port = free_port()
    pacs = FakePacs(pacs_port)
    pacs._handle = lambda event: 0xA700  # out of resources, every time
    pacs.start()
    outbox = tmp_path / "results/outbox"
    src = make_radiograph(tmp_path / "src.dcm")
    from chestxr.serve.worker import Scorer

    scorer = Scorer(ckpt, cams=False)
    from chestxr.serve import results

    ds = pydicom.dcmread(src, stop_before_pixels=True)
    results.write_sr(
        ds, {"outputs": scorer.outputs(np.array([0.7]))}, scorer.info, outbox / "k.sr.dcm"
    )
    metrics = Metrics()
    sender = Sender(
        outbox,
        Destination("127.0.0.1", pacs_port, "PACS"),
        metrics,
        backoff_s=0.0,
        max_rejections=3,
    )
    try:
        for _ in range(3):
            sender.send(sender.waiting())
    finally:
        pacs.stop()
    assert not sender.waiting()
    assert [p.name for p in (tmp_path / "results/rejected").iterdir()] == ["k.sr.dcm"]
    assert metrics.snapshot()["sent"] == 0


def test_a_result_the_pacs_does_not_answer_in_time_is_sent_again_over_a_new_association(
    ckpt: Path, tmp_path: Path
) -> None:
    """A PACS that takes a C-STORE but answers only after the sender's timeout (or never: an
    answer lost on the way does the same): the sender counts a send error, drops that
    association and sends the file again over a new one, and the file ends in ``sent/`` (the
    PACS has it twice: the same SOP Instance UID, which a PACS stores once)."""

    from chestxr.serve.sender import Destination, Sender

    metrics = Metrics()

    class SlowOnce(FakePacs):
        calls = 0

        def _handle(self, event) -> int:
            self.calls += 1
            if self.calls == 1:  # the first request: answered only after the sender gave up
                end = time.monotonic() + 15  # (a sender that never gives up: answered at 15 s)
                while metrics.counts()["send_errors"] < 1 and time.monotonic() < end:
                    time.sleep(0.05)
                time.sleep(0.2)
            return super()._handle(event)

    pacs = SlowOnce(free_port()).start()
    outbox = tmp_path / "results/outbox"
    _results(ckpt, tmp_path, outbox, range(1))
    sender = Sender(
        outbox,
        Destination("127.0.0.1", pacs.port, "PACS"),
        metrics,
        max_rejections=3,
        backoff_s=0.2,
        timeout_s=1.0,
    )
    stop, thread = run_in_thread(sender)
    try:
        wait_for(lambda: metrics.counts()["sent"] == 1, timeout=30)
        wait_for(lambda: pacs.calls == 2 and len(pacs.stored) == 1, timeout=10)
        wait_for(lambda: next(iter(pacs.stored.values()))[2] == 2, timeout=10)  # the late one
    finally:
        stop.set()
        thread.join(timeout=10)
        pacs.stop()
    assert metrics.counts()["send_errors"] >= 1
    assert len(pacs.associations) >= 2  # the first dropped after the timeout
    assert not sender.waiting() and len(list((tmp_path / "results/sent").iterdir())) == 1


def test_an_unreadable_result_is_set_aside_and_the_next_is_still_sent(
    ckpt: Path, tmp_path: Path, caplog
) -> None:
    import os

    from chestxr.serve import results
    from chestxr.serve.sender import Destination, Sender
    from chestxr.serve.worker import Scorer

    pacs = FakePacs(free_port()).start()
    outbox = tmp_path / "results/outbox"
    outbox.mkdir(parents=True)
    garbage = outbox / "a.sr.dcm"
    garbage.write_bytes(b"not a DICOM file at all" * 10)
    os.utime(garbage, ns=(1, 1))  # the oldest: sent first
    scorer = Scorer(ckpt, cams=False)
    ds = pydicom.dcmread(make_radiograph(tmp_path / "src.dcm"), stop_before_pixels=True)
    results.write_sr(
        ds, {"outputs": scorer.outputs(np.array([0.7]))}, scorer.info, outbox / "b.sr.dcm"
    )
    metrics = Metrics()
    sender = Sender(outbox, Destination("127.0.0.1", pacs.port, "PACS"), metrics, max_rejections=5)
    stop, thread = run_in_thread(sender)
    try:
        wait_for(lambda: (tmp_path / "results/sent/b.sr.dcm").exists(), timeout=15)
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(timeout=10)
        pacs.stop()
    assert [p.name for p in (tmp_path / "results/rejected").iterdir()] == ["a.sr.dcm"]
    assert len(pacs.stored) == 1 and metrics.snapshot()["sent"] == 1
    assert "a.sr.dcm" in caplog.text and "InvalidDicomError" in caplog.text


def test_results_go_over_several_associations_at_once_each_file_once(
    ckpt: Path, tmp_path: Path
) -> None:
    """With ``destination.associations: 3`` the outbox is split over three concurrent
    associations (a PACS stores in parallel; Orthanc takes ~90 ms per instance on one); every
    result arrives exactly once and leaves the outbox."""
    import threading

    from chestxr.serve import results
    from chestxr.serve.sender import Destination, Sender
    from chestxr.serve.worker import Scorer

    pacs = FakePacs(free_port())
    associations: set[int] = set()
    at_once, busy, lock = [0], [0], threading.Lock()
    overlapped = threading.Event()
    record = pacs._handle

    def handle(event) -> int:
        with lock:
            associations.add(id(event.assoc))
            busy[0] += 1
            at_once[0] = max(at_once[0], busy[0])
            if busy[0] >= 2:
                overlapped.set()
        # A PACS taking its time to store: until two stores have overlapped, each store is held
        # (up to 5 s) so that a second association, if the sender opened one, gets its file in
        # while this one is busy, however slowly the machine starts it; a sender that sends
        # one file at a time never overlaps and waits out the 5 s.
        overlapped.wait(5.0)
        time.sleep(0.05)
        with lock:
            busy[0] -= 1
        return record(event)

    pacs._handle = handle
    pacs.start()
    outbox = tmp_path / "results/outbox"
    scorer = Scorer(ckpt, cams=False)
    builder = results.ReportBuilder(scorer.info)
    for i in range(9):
        ds = pydicom.dcmread(
            make_radiograph(tmp_path / f"s{i}.dcm", seed=i), stop_before_pixels=True
        )
        result = {"outputs": scorer.outputs(np.array([0.1 * i]))}
        results.write_sr(ds, result, scorer.info, outbox / f"k{i}.sr.dcm", builder)
    dest = Destination("127.0.0.1", pacs.port, "PACS", associations=3)
    sender = Sender(outbox, dest, Metrics(), max_rejections=3)
    stop, thread = run_in_thread(sender)
    try:
        wait_for(lambda: not sender.waiting(), timeout=30)
    finally:
        stop.set()
        thread.join(timeout=10)
        pacs.stop()
    assert len(pacs.stored) == 9 and all(n == 1 for _, _, n in pacs.stored.values())
    assert len(associations) == 3 and at_once[0] >= 2
    assert len(list((tmp_path / "results/sent").glob("*.dcm"))) == 9


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_pynetdicom_logs_each_message_only_at_debug(
    ckpt: Path, tmp_path: Path, caplog, monkeypatch, level: str
) -> None:
    """pynetdicom's per-message lines (and their formatting for every PDU) only when its logger
    is at DEBUG; the association itself is logged either way."""
    from pynetdicom import _config

    from chestxr.serve.node import Node

    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", _config.LOG_HANDLER_LEVEL)  # restored after
    caplog.set_level(level, logger="pynetdicom")
    src = make_radiograph(tmp_path / "g.dcm", seed=1)
    cfg = node_config(ckpt, tmp_path / "state", http_port=None, cams=False)
    node = Node(cfg).start()
    try:
        assert c_store(cfg["port"], [src]) == [0]
    finally:
        node.stop()
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("pynetdicom")]
    assert "Accepting Association" in lines  # the node's end, logged by pynetdicom's ACSE
    assert ("Received Store Request" in lines) == (level == "DEBUG")
    uid = str(pydicom.dcmread(src, stop_before_pixels=True).SOPInstanceUID)
    assert any(uid in line for line in lines) == (level == "DEBUG")


def _results(ckpt: Path, tmp_path: Path, outbox: Path, seeds: range) -> None:
    """Write an SR per seed into ``outbox`` (as the worker does)."""
    from chestxr.serve import results
    from chestxr.serve.worker import Scorer

    scorer = Scorer(ckpt, cams=False)
    builder = results.ReportBuilder(scorer.info)
    for i in seeds:
        src = make_radiograph(tmp_path / f"s{i}.dcm", seed=i)
        ds = pydicom.dcmread(src, stop_before_pixels=True)
        result = {"outputs": scorer.outputs(np.array([0.05 * (i % 20)]))}
        results.write_sr(ds, result, scorer.info, outbox / f"k{i}.sr.dcm", builder)


def _burst(files: list[Path], outbox: Path) -> None:
    """Move ``files`` into ``outbox`` at once, as the worker puts a batch's results."""
    for f in files:
        os.replace(f, outbox / f.name)


def test_an_association_carries_bursts_of_results_and_is_released_when_idle(
    ckpt: Path, tmp_path: Path
) -> None:
    """Results come in bursts (a batch of 8 at a time): a burst of 8 opens two lanes (one
    association per 4 files waiting), the next burst goes over the same associations, and
    each is released once nothing has come for ``idle_s``; while its lane waits, its reader
    polls every 50 ms, not 5. (The sender that split each round over every allowed association
    opened 10 for these 16 results.)"""
    import threading

    from pynetdicom.association import Association

    from chestxr.serve.sender import DUL_IDLE_POLL_S, DUL_WAITING_POLL_S, Destination, Sender

    def polls() -> list[float]:
        """The reader's poll of each association the sender holds open."""
        return [
            t.dul._run_loop_delay
            for t in threading.enumerate()
            if isinstance(t, Association) and t.is_requestor and t.is_established
        ]

    sending: list[bool] = []  # at each request the PACS takes: a lane's reader at 5 ms

    class Watching(FakePacs):
        def _handle(self, event) -> int:
            sending.append(DUL_IDLE_POLL_S in polls())
            return super()._handle(event)

    pacs = Watching(free_port()).start()
    outbox, made = tmp_path / "results/outbox", tmp_path / "made"
    _results(ckpt, tmp_path, made, range(16))
    dest = Destination("127.0.0.1", pacs.port, "PACS", associations=4)
    sender = Sender(outbox, dest, Metrics(), max_rejections=3, idle_s=5.0)
    stop, thread = run_in_thread(sender)
    try:
        _burst(sorted(made.iterdir())[:8], outbox)
        wait_for(lambda: sender.metrics.counts()["sent"] == 8, timeout=30)
        wait_for(lambda: polls() and set(polls()) == {DUL_WAITING_POLL_S}, timeout=10)
        _burst(sorted(made.iterdir()), outbox)
        wait_for(lambda: sender.metrics.counts()["sent"] == 16, timeout=30)
        assert 1 <= len(pacs.associations) <= 2
        wait_for(lambda: pacs.released == len(pacs.associations), timeout=20)
    finally:
        stop.set()
        thread.join(timeout=10)
        pacs.stop()
    assert len(pacs.stored) == 16 and all(n == 1 for _, _, n in pacs.stored.values())
    assert not sender.waiting() and len(list((tmp_path / "results/sent").iterdir())) == 16
    assert len(sending) == 16 and all(sending)


def test_a_pacs_taking_fewer_associations_than_configured_gets_every_result_at_once(
    ckpt: Path, tmp_path: Path
) -> None:
    """A PACS that takes one association at a time (``associations: 4`` configured): a burst
    that opens a second lane while the first holds the one association is rejected, and its
    files go back to the first lane instead of waiting out a back-off; every result arrives
    once."""

    from chestxr.serve.sender import Destination, Sender

    pacs = FakePacs(free_port(), max_associations=1).start()
    outbox, made = tmp_path / "results/outbox", tmp_path / "made"
    _results(ckpt, tmp_path, made, range(12))
    dest = Destination("127.0.0.1", pacs.port, "PACS", associations=4)
    metrics = Metrics()
    sender = Sender(outbox, dest, metrics, max_rejections=3, backoff_s=60.0, idle_s=30.0)
    stop, thread = run_in_thread(sender)
    try:
        _burst(sorted(made.iterdir())[:4], outbox)  # one lane, one association
        wait_for(lambda: metrics.counts()["sent"] == 4, timeout=30)
        _burst(sorted(made.iterdir()), outbox)  # 8 more: a second lane, which the PACS rejects
        wait_for(lambda: metrics.counts()["sent"] == 12, timeout=30)  # no 60 s back-off
    finally:
        stop.set()
        thread.join(timeout=10)
        pacs.stop()
    assert len(pacs.associations) == 1  # EVT_ESTABLISHED: the rejected one never was
    assert len(pacs.stored) == 12 and all(n == 1 for _, _, n in pacs.stored.values())
    assert metrics.counts()["send_errors"] == 0 and not sender.waiting()


def test_a_pacs_that_drops_an_idle_association_gets_the_next_result_over_a_new_one(
    ckpt: Path, tmp_path: Path
) -> None:
    """A lane keeps its association open between results; when the PACS drops it meanwhile
    (restarted here), the next result goes over a new association at once, not after a
    response timeout, and is stored once."""

    from chestxr.serve.sender import Destination, Sender

    port = free_port()
    first = FakePacs(port).start()
    outbox = tmp_path / "results/outbox"
    sender = Sender(
        outbox,
        Destination("127.0.0.1", port, "PACS"),
        Metrics(),
        max_rejections=3,
        idle_s=60.0,
        timeout_s=30.0,
    )
    stop, thread = run_in_thread(sender)
    second = FakePacs(port)
    try:
        _results(ckpt, tmp_path, outbox, range(1))
        wait_for(lambda: sender.metrics.counts()["sent"] == 1, timeout=30)
        for assoc in first._server.active_associations:  # the PACS drops it (restarted)
            assoc.abort()
        first.stop()
        second.start()
        _results(ckpt, tmp_path, outbox, range(1, 2))
        t = time.monotonic()
        wait_for(lambda: sender.metrics.counts()["sent"] == 2, timeout=30)
        assert time.monotonic() - t < 10  # not a 30 s wait for an answer that cannot come
    finally:
        stop.set()
        thread.join(timeout=10)
        second.stop()
    assert len(first.stored) == 1 and len(second.stored) == 1
    assert all(n == 1 for _, _, n in second.stored.values())
    assert not sender.waiting()


@pytest.mark.parametrize("pacs_syntax", ["explicit", "implicit"])
def test_a_result_arrives_as_written_whichever_syntax_the_pacs_accepts(
    ckpt: Path, tmp_path: Path, pacs_syntax: str, monkeypatch
) -> None:
    """Where the PACS accepts the file's transfer syntax the file's bytes are sent as they are
    (no decoding and encoding again); where it does not, pynetdicom converts. Either way the PACS
    holds the same data set as the file."""
    from pynetdicom import AE, evt

    from chestxr.serve import results
    from chestxr.serve.sender import Destination, Sender
    from chestxr.serve.worker import Scorer

    syntax = {"explicit": ExplicitVRLittleEndian, "implicit": ImplicitVRLittleEndian}[pacs_syntax]
    received: list[tuple[pydicom.Dataset, str]] = []

    def handle(event) -> int:
        received.append((event.dataset, str(event.context.transfer_syntax)))
        return 0x0000

    ae = AE(ae_title="PACS")
    for sop in RESULT_SOP_CLASSES:
        ae.add_supported_context(sop, [syntax])
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle)]
    )
    outbox = tmp_path / "results/outbox"
    scorer = Scorer(ckpt, cams=False)
    ds = pydicom.dcmread(make_radiograph(tmp_path / "src.dcm"), stop_before_pixels=True)
    sr = results.write_sr(
        ds, {"outputs": scorer.outputs(np.array([0.7]))}, scorer.info, outbox / "k.sr.dcm"
    )
    written = pydicom.dcmread(sr)
    sender = Sender(outbox, Destination("127.0.0.1", port, "PACS"), Metrics(), max_rejections=1)
    decoded = []
    real_dcmread = pydicom.dcmread
    monkeypatch.setattr(
        pydicom, "dcmread", lambda f, *a, **k: decoded.append(f) or real_dcmread(f, *a, **k)
    )
    try:
        assert sender.send(sender.waiting()) == 1
    finally:
        server.shutdown()
    assert decoded == ([] if pacs_syntax == "explicit" else [sr])  # sent as bytes where it can
    assert len(received) == 1
    got, used = received[0]
    assert used == str(syntax)
    assert got == written  # every element, sequences included
    assert written.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_health_names_a_stopped_thread(ckpt: Path, tmp_path: Path, monkeypatch) -> None:
    from chestxr.serve.node import Node
    from chestxr.serve.sender import Sender

    def broken(self, stop) -> None:
        raise RuntimeError("the sender's thread ends")

    monkeypatch.setattr(Sender, "run", broken)
    cfg = node_config(
        ckpt,
        tmp_path / "state",
        destination={"host": "127.0.0.1", "port": free_port(), "ae_title": "PACS"},
    )
    node = Node(cfg).start()
    try:
        wait_for(lambda: not node.alive()["chestxr-sender"], timeout=10)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{cfg['http_port']}/health")
        body = json.load(err.value)
        assert err.value.code == 503 and body["status"] == "degraded"
        assert body["stopped"] == ["chestxr-sender"] and body["threads"]["chestxr-worker-0"]
    finally:
        node.stop()


def test_no_sr_reaches_the_outbox_when_its_secondary_capture_fails(
    ckpt: Path, tmp_path: Path, monkeypatch
) -> None:
    from chestxr.serve import results
    from chestxr.serve.worker import Scorer, Worker

    spool = Spool(tmp_path / "spool")
    src = make_radiograph(tmp_path / "src.dcm")
    uid = str(pydicom.dcmread(src, stop_before_pixels=True).SOPInstanceUID)
    spool.put(uid, src.read_bytes())
    outbox = tmp_path / "results/outbox"
    seen: list[list[str]] = []

    def failing_sc(*args, **kwargs):
        seen.append(sorted(p.name for p in outbox.iterdir()))  # what the sender could see now
        raise ValueError("no Secondary Capture today")

    monkeypatch.setattr(results, "build_sc", failing_sc)
    worker = Worker(spool, Scorer(ckpt, cams=True), outbox, Metrics())
    worker.process(spool.claim(8))
    assert seen == [[]]  # the SR was not in the outbox while the SC was being built
    assert not list(outbox.iterdir()) and not list((tmp_path / "results/staging").iterdir())
    record = spool.record(spool_key(uid))
    assert record["state"] == "failed"
    assert "no Secondary Capture today" in record["reason"]


def test_a_scan_without_type_2_patient_and_study_attributes_is_scored(
    ckpt: Path, tmp_path: Path
) -> None:
    """De-identification tools and some modalities drop type 2 attributes (accession number,
    birth date, ...) instead of leaving them empty: the scan still gets its SR and Secondary
    Capture, with those attributes present and empty, as their modules require."""
    from chestxr.serve.worker import Scorer, Worker

    spool = Spool(tmp_path / "spool")
    dropped = ("AccessionNumber", "PatientBirthDate", "PatientSex", "StudyID", "StudyTime")
    src = make_radiograph(tmp_path / "src.dcm", **dict.fromkeys(dropped))
    uid = str(pydicom.dcmread(src, stop_before_pixels=True).SOPInstanceUID)
    spool.put(uid, src.read_bytes())
    outbox = tmp_path / "results/outbox"
    Worker(spool, Scorer(ckpt, cams=True), outbox, Metrics()).process(spool.claim(8))
    key = spool_key(uid)
    record = spool.record(key)
    assert record["state"] == "done", record.get("reason")
    sr = pydicom.dcmread(outbox / f"{key}.sr.dcm")
    sc = pydicom.dcmread(outbox / f"{key}.sc.dcm")
    for obj in (sr, sc):
        for keyword in dropped:
            assert keyword in obj and not obj[keyword].value, keyword
        assert obj.PatientID == pydicom.dcmread(src).PatientID
    assert "PatientOrientation" in sc  # type 2C in its General Image module; the source has none


def test_what_is_not_a_radiograph_gets_a_failure_record_naming_why(
    ckpt: Path, tmp_path: Path
) -> None:
    """Refused by their headers: an MR image (in the spool, or posted to the HTTP face with or
    without preamble), a Secondary Capture of a CT or of a workstation screen, and the node's own
    Grad-CAM result sent back to it (it would otherwise be scored again and again); a Secondary
    Capture of a digitised film is scored."""
    from chestxr.explain.secondary_capture import write_secondary_capture
    from chestxr.serve.admission import NotScorable
    from chestxr.serve.http import score_bytes
    from chestxr.serve.worker import Scorer, Worker

    mr, sc = "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.7"
    files = {
        "mr": make_radiograph(tmp_path / "mr.dcm", SOPClassUID=mr, Modality="MR"),
        "sc_ct": make_radiograph(tmp_path / "sc_ct.dcm", seed=1, SOPClassUID=sc, Modality="CT"),
        "sc_screen": make_radiograph(
            tmp_path / "sc_ws.dcm", seed=2, SOPClassUID=sc, Modality="OT", ConversionType="WSD"
        ),
        "sc_film": make_radiograph(
            tmp_path / "sc_df.dcm", seed=3, SOPClassUID=sc, Modality="OT", ConversionType="DF"
        ),
    }
    source = make_radiograph(tmp_path / "src.dcm", seed=4)
    rgb = np.zeros((96, 96, 3), np.uint8)
    files["ours"] = write_secondary_capture(rgb, source, tmp_path / "ours.dcm")
    spool = Spool(tmp_path / "spool")
    keys = {}
    for name, path in files.items():
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        spool.put(uid, path.read_bytes())
        keys[name] = spool_key(uid)
    scorer = Scorer(ckpt, cams=False)
    Worker(spool, scorer, tmp_path / "out", Metrics()).process(spool.claim(8))
    records = {name: spool.record(key) for name, key in keys.items()}
    assert records["mr"]["reason"] == "not a radiograph: SOP class MR Image Storage"
    assert records["sc_ct"]["reason"] == "not a radiograph: Modality 'CT'"
    wsd = "not a radiograph: Secondary Capture of ConversionType 'WSD'"
    assert records["sc_screen"]["reason"] == records["ours"]["reason"] == wsd
    assert records["sc_film"]["state"] == "done"
    # over HTTP, with and without the preamble and file meta header
    bare = tmp_path / "mr_bare.dcm"
    ds = pydicom.dcmread(files["mr"])
    del ds.file_meta
    ds.preamble = None
    pydicom.dcmwrite(bare, ds, implicit_vr=True, little_endian=True)
    assert bare.read_bytes()[128:132] != b"DICM"
    for path in (files["mr"], bare):
        with pytest.raises(NotScorable, match="MR Image Storage"):
            score_bytes(scorer, path.read_bytes(), tmp_path)
    answer = score_bytes(scorer, files["sc_film"].read_bytes(), tmp_path)
    assert 0 <= answer["outputs"][0]["probability"] <= 1


def test_a_chestxr_result_is_refused_whatever_its_sop_class() -> None:
    from chestxr.serve.admission import NotScorable, check_frontal_chest

    ds = Dataset()
    ds.SOPClassUID, ds.Modality = "1.2.840.10008.5.1.4.1.1.1.1", "DX"
    check_frontal_chest(ds)  # a DX: scored
    ds.Manufacturer = "chestxr"
    with pytest.raises(NotScorable, match="a chestxr result"):
        check_frontal_chest(ds)


@pytest.mark.parametrize("keyword", ["SeriesInstanceUID", "Modality"])
def test_a_scan_without_a_type_1_series_attribute_fails_naming_it(
    ckpt: Path, tmp_path: Path, keyword: str
) -> None:
    """Without its series UID or modality a result cannot be filed beside the scan: the failure
    record names the attribute, and the scan is not scored."""
    from chestxr.serve.worker import Scorer, Worker

    spool = Spool(tmp_path / "spool")
    src = make_radiograph(tmp_path / "src.dcm", **{keyword: None})
    uid = str(pydicom.dcmread(src, stop_before_pixels=True).SOPInstanceUID)
    spool.put(uid, src.read_bytes())
    metrics = Metrics()
    Worker(spool, Scorer(ckpt, cams=False), tmp_path / "out", metrics).process(spool.claim(8))
    record = spool.record(spool_key(uid))
    assert record["state"] == "failed" and record["reason"] == f"DICOM lacks {keyword}"
    assert metrics.snapshot()["scored"] == 0


@pytest.mark.parametrize("overlap", [True, False], ids=["pipelined", "in-turn"])
def test_the_worker_loses_nothing_when_writing_or_scoring_fails(
    ckpt: Path, tmp_path: Path, monkeypatch, overlap: bool
) -> None:
    """The worker, in its three threads (read, score, write) or on one: a full disk while
    results are written, then a model failure, leave the instances pending; once the faults
    clear each ends with exactly one result and none is lost."""
    import errno
    import threading

    from chestxr.serve import results
    from chestxr.serve.worker import Scorer, Worker

    spool = Spool(tmp_path / "spool")
    uids = []
    for i in range(10):
        src = make_radiograph(tmp_path / f"s{i}.dcm", seed=i)
        uids.append(str(pydicom.dcmread(src, stop_before_pixels=True).SOPInstanceUID))
        spool.put(uids[-1], src.read_bytes())
    faults, writes = {"disk": 3, "model": 1}, {"tried": 0, "written": 0}
    write_sr, lock = results.write_sr, threading.Lock()

    def full_disk_after_the_first(*args, **kwargs):
        with lock:  # the first instance's results written, then the disk is full three times
            writes["tried"] += 1
            if writes["tried"] > 1 and faults["disk"] > 0:
                faults["disk"] -= 1
                raise OSError(errno.ENOSPC, "No space left on device")
        out = write_sr(*args, **kwargs)
        with lock:
            writes["written"] += 1
        return out

    scorer = Scorer(ckpt, cams=False)
    score = scorer.score

    def model_fails_once(images):
        with lock:  # once the disk has room again
            if faults["disk"] == 0 and faults["model"] > 0:
                faults["model"] -= 1
                raise RuntimeError("out of memory")
        return score(images)

    monkeypatch.setattr(results, "write_sr", full_disk_after_the_first)
    monkeypatch.setattr(scorer, "score", model_fails_once)
    outbox = tmp_path / "results/outbox"
    worker = Worker(spool, scorer, outbox, Metrics(), batch_size=4, poll_s=0.01, overlap=overlap)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True, name="worker-x")
    thread.start()
    try:
        wait_for(lambda: spool.counts()["done"] == 10, timeout=120)
        # the pipeline's reader and writer beside the worker's own thread, or that thread alone
        stages = {t.name for t in threading.enumerate()} & {"worker-x-read", "worker-x-write"}
    finally:
        stop.set()
        thread.join(timeout=30)
    assert stages == ({"worker-x-read", "worker-x-write"} if overlap else set())
    assert not thread.is_alive()
    assert faults == {"disk": 0, "model": 0}  # both faults happened
    assert spool.counts() == {"pending": 0, "done": 10, "failed": 0}
    # the instance recorded before the disk filled, given back with its batch, was not redone
    assert writes["written"] == 10
    assert set(worker.cpu_s) == {"read", "forward", "write"} and min(worker.cpu_s.values()) > 0
    assert sorted(p.name for p in outbox.iterdir()) == sorted(
        f"{spool_key(u)}.sr.dcm" for u in uids
    )
    assert not list((tmp_path / "results/staging").iterdir())


def test_the_worker_overlaps_its_stages_only_where_they_can_run_at_once(monkeypatch) -> None:
    import os

    import torch

    from chestxr.serve.worker import stages_can_overlap

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert not stages_can_overlap(torch.device("cpu"))  # one core: the stages take turns
    assert stages_can_overlap(torch.device("cuda"))  # the model runs beside the CPU
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert stages_can_overlap(torch.device("cpu"))
    monkeypatch.delattr(os, "sched_getaffinity")  # macOS, Windows: the machine's count
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert not stages_can_overlap(torch.device("cpu"))
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert stages_can_overlap(torch.device("cpu"))


def text_values(ds: Dataset) -> set[str]:
    """Every TEXT content item's value in an SR's content tree."""
    out: set[str] = set()
    for item in ds.get("ContentSequence", []):
        if "TextValue" in item:
            out.add(str(item.TextValue))
        out |= text_values(item)
    return out


def test_results_carry_the_model_cards_config_hash(tmp_path: Path, caplog) -> None:
    from chestxr.serve import results
    from chestxr.serve.adapter import load

    src = pydicom.dcmread(make_radiograph(tmp_path / "src.dcm"), stop_before_pixels=True)
    result = {"outputs": [{"name": "opacity", "probability": 0.7, "threshold": 0.5}]}
    result["outputs"][0]["decision"] = True
    card = make_checkpoint(tmp_path / "card.ckpt", summary={"config_hash": "0123456789abcdef"})
    _, info = load(card)
    assert (info["config_hash"], info["config_hash_source"]) == ("0123456789abcdef", "run")
    texts = text_values(pydicom.dcmread(results.write_sr(src, result, info, tmp_path / "a.dcm")))
    assert {"config_hash=0123456789abcdef", "config_hash_source=run"} <= texts
    assert "records no training config hash" not in caplog.text
    # a checkpoint without the run's hash: the hyperparameters' hash, said so
    _, info = load(make_checkpoint(tmp_path / "bare.ckpt"))
    assert info["config_hash_source"] == "hparams" and info["config_hash"] != "0123456789abcdef"
    assert "records no training config hash" in caplog.text
    texts = text_values(pydicom.dcmread(results.write_sr(src, result, info, tmp_path / "b.dcm")))
    assert {f"config_hash={info['config_hash']}", "config_hash_source=hparams"} <= texts


def test_a_multilabel_scan_is_explained_for_its_most_probable_finding(tmp_path: Path) -> None:
    from chestxr.explain.cam import compute_cams, top_finding_cams
    from chestxr.serve import results
    from chestxr.serve.worker import Scorer, Worker

    torch.manual_seed(1)
    model = ChestXRClassifier(
        task="multilabel",
        classes=["effusion", "nodule", "opacity"],
        preprocess={"image_size": 64},
        optimizer=OPT,
    ).eval()
    images = torch.rand(6, 1, 64, 64)
    maps, explained, logits = top_finding_cams(model, images, target_layer="net.layer4")
    with torch.no_grad():
        direct = model(images)
        assert explained.tolist() == direct.argmax(1).tolist()
    # the scores come from the same (one) forward pass: what an inference forward gives
    assert np.allclose(logits, direct.numpy(), atol=1e-5)
    assert len(set(explained.tolist())) > 1  # not output 0 for every scan
    for i, k in enumerate(explained):
        one = images[i : i + 1]
        want = compute_cams(model, one, output_index=int(k), target_layer="net.layer4")
        assert np.allclose(maps[i], want[0], atol=1e-5)
    # the node: the record and the Secondary Capture's banner name the finding explained
    ckpt = tmp_path / "multi.ckpt"
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": L.__version__,
        },
        ckpt,
    )
    spool = Spool(tmp_path / "spool")
    src = make_radiograph(tmp_path / "src.dcm")
    uid = str(pydicom.dcmread(src, stop_before_pixels=True).SOPInstanceUID)
    spool.put(uid, src.read_bytes())
    scorer = Scorer(ckpt, cams=True)
    Worker(spool, scorer, tmp_path / "results/outbox", Metrics()).process(spool.claim(8))
    record = spool.record(spool_key(uid))
    probs = [o["probability"] for o in record["outputs"]]
    assert record["explained"] == record["outputs"][int(np.argmax(probs))]["name"]
    lines = results.banner_lines(record, scorer.info)
    assert lines[0] == f"Grad-CAM of {record['explained']}"


def start_node_process(cfg: dict, log_path: Path):
    """``python -m chestxr.serve`` as a subprocess with ``cfg``; returns once it accepts C-ECHO."""
    import os
    import subprocess
    import sys

    from pynetdicom import AE

    dest = cfg["destination"]
    args = [
        f"ckpt_path={cfg['ckpt_path']}",
        f"state_dir={cfg['state_dir']}",
        f"port={cfg['port']}",
        f"allowed_calling_ae_titles=[{','.join(cfg['allowed_calling_ae_titles'])}]",
        f"destination.host={dest['host']}",
        f"destination.port={dest['port']}",
        f"destination.ae_title={dest['ae_title']}",
        f"retry.backoff_s={cfg['retry']['backoff_s']}",
        f"retry.backoff_max_s={cfg['retry']['backoff_max_s']}",
        f"batch_size={cfg['batch_size']}",
        f"cams={str(cfg['cams']).lower()}",
        "http_port=null",
        f"hydra.run.dir={Path(cfg['state_dir']).parent / 'hydra'}",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    log = open(log_path, "a")  # noqa: SIM115 (lives as long as the process)
    proc = subprocess.Popen(
        [sys.executable, "-m", "chestxr.serve", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )

    def echo() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"node exited with {proc.returncode}: {log_path.read_text()}")
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", cfg["port"], ae_title="CHESTXR")
        if not assoc.is_established:
            return False
        assoc.release()
        return True

    wait_for(echo, timeout=120)
    return proc


@pytest.mark.slow
def test_node_killed_mid_stream_loses_no_acknowledged_instance(ckpt: Path, tmp_path: Path) -> None:
    """SIGKILL after some C-STOREs were acknowledged; the restarted node scores each once."""
    import signal

    pacs = FakePacs(free_port()).start()
    cfg = node_config(
        ckpt,
        tmp_path / "state",
        destination={"host": "127.0.0.1", "port": pacs.port, "ae_title": "PACS"},
        retry={"backoff_s": 0.1, "backoff_max_s": 0.5, "max_rejections": 5},
        batch_size=2,
    )
    files = [make_radiograph(tmp_path / f"g{i}.dcm", seed=i, size=256) for i in range(10)]
    log_path = tmp_path / "node.log"
    proc = start_node_process(cfg, log_path)
    try:
        assert c_store(cfg["port"], files) == [0] * len(files)  # all acknowledged
        proc.send_signal(signal.SIGKILL)  # at once: most are still pending or mid-batch
        proc.wait(timeout=30)
        spool = Spool(tmp_path / "state/spool")
        assert spool.counts()["pending"] > 0, "killed too late to test anything"
        proc = start_node_process(cfg, log_path)
        assert c_store(cfg["port"], files[:2]) == [0, 0]  # re-sent after the crash: no 2nd result
        sources = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}

        def all_arrived() -> bool:
            got = pacs.results_per_source()
            return len(got) == len(files) and all(sum(c.values()) >= 2 for c in got.values())

        wait_for(all_arrived, timeout=180)  # an SR and an SC each (they may arrive apart)
        done = {"pending": 0, "done": len(files), "failed": 0}
        wait_for(lambda: spool.counts() == done, timeout=30)  # done once its results are written
        time.sleep(1.0)  # (room for a duplicate, which the counts below would show)
        assert set(pacs.results_per_source()) == sources
        for counts in pacs.results_per_source().values():
            assert sorted(counts.values()) == [1, 1] and len(counts) == 2  # one SR, one SC
        assert spool.counts() == {"pending": 0, "done": len(files), "failed": 0}
        proc.send_signal(signal.SIGTERM)  # a clean shutdown
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        pacs.stop()
    text = log_path.read_text() + "".join(
        p.read_text() for p in (tmp_path / "hydra").rglob("*.log")
    )  # the console and Hydra's job log
    assert "scored scan-" in text  # the logs do name instances, by anonymised ids
    for path in files:
        src = pydicom.dcmread(path, stop_before_pixels=True)
        for value in (src.SOPInstanceUID, src.StudyInstanceUID, src.PatientID, "Doe"):
            assert str(value) not in text
