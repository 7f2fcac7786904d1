"""Results by DICOMweb STOW-RS: a stand-in DICOMweb server made with the standard library (what
it is sent, byte for byte, and how the node takes each kind of answer), and Orthanc's own
DICOMweb plugin (Debian's ``orthanc-dicomweb``) as the real one."""

from __future__ import annotations

import io
import json
import threading
import time
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydicom
import pytest

from chestxr.serve.sender import COMPREHENSIVE_3D_SR
from chestxr.serve.stow import StowClient, judge
from tests.test_serve import (
    free_port,
    make_checkpoint,
    make_radiograph,
    node_config,
    wait_for,
)

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class FakeDicomWeb:
    """A STOW-RS endpoint: parses each request's multipart body, keeps the DICOM parts, and
    answers with ``status`` (200 stores; 409 refuses with a Failed SOP Sequence; others as
    given). ``requests`` holds (path, headers, parts) of every request."""

    def __init__(self) -> None:
        self.status = 200
        self.requests: list[tuple[str, dict, list[bytes]]] = []
        self.client_ports: list[int] = []  # the connection each request came over
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                head = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
                message = BytesParser(policy=HTTP).parsebytes(head + body)
                parts = [p.get_payload(decode=True) for p in message.iter_parts()]
                outer.requests.append((self.path, dict(self.headers), parts))
                outer.client_ports.append(self.client_address[1])
                uid = str(pydicom.dcmread(io.BytesIO(parts[0])).SOPInstanceUID)
                item = {"00081155": {"vr": "UI", "Value": [uid]}}
                if outer.status == 409:
                    item["00081197"] = {"vr": "US", "Value": [0xA700]}
                    answer = {"00081198": {"vr": "SQ", "Value": [item]}}
                else:
                    answer = {"00081199": {"vr": "SQ", "Value": [item]}}
                data = json.dumps(answer).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def stored_uids(self) -> list[str]:
        return [
            str(pydicom.dcmread(io.BytesIO(parts[0])).SOPInstanceUID)
            for _, _, parts in self.requests
        ]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("model") / "model.ckpt")


def stow_node(ckpt: Path, state: Path, url: str, **over: object):
    from chestxr.serve.node import Node

    dest = {"host": None, "stow_url": url, "associations": 2, **over}
    cfg = node_config(
        ckpt,
        state,
        http_port=None,
        cams=False,
        destination=dest,
        retry={"backoff_s": 0.1, "backoff_max_s": 0.5, "max_rejections": 2},
    )
    return Node(cfg).start(), cfg


def test_results_are_stowed_as_written_with_the_configured_headers(
    ckpt: Path, tmp_path: Path
) -> None:
    from tests.test_serve import c_store

    server = FakeDicomWeb()
    node, cfg = stow_node(
        ckpt, tmp_path / "state", server.url, stow_headers={"Authorization": "Bearer t0ken"}
    )
    scans = [make_radiograph(tmp_path / f"s{i}.dcm", seed=i) for i in range(3)]
    try:
        assert c_store(cfg["port"], scans) == [0, 0, 0]
        wait_for(lambda: node.metrics.snapshot()["sent"] == 3, timeout=30)
    finally:
        node.stop()
        server.stop()
    sent = {p.read_bytes() for p in (tmp_path / "state/results/sent").glob("*.sr.dcm")}
    assert len(sent) == 3
    for path, headers, parts in server.requests:
        assert path == "/dicom-web/studies"
        assert headers["Authorization"] == "Bearer t0ken"
        assert headers["Content-Type"].startswith('multipart/related; type="application/dicom"')
        assert len(parts) == 1 and parts[0] in sent  # the file's bytes, not re-encoded
    sources = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in scans}
    referenced = set()
    for _, _, parts in server.requests:
        sr = pydicom.dcmread(io.BytesIO(parts[0]))
        assert sr.SOPClassUID == COMPREHENSIVE_3D_SR
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        referenced.add(str(evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
    assert referenced == sources


def test_a_refused_result_is_set_aside_and_an_unavailable_server_is_waited_for(
    ckpt: Path, tmp_path: Path
) -> None:
    from tests.test_serve import c_store

    server = FakeDicomWeb()
    server.status = 409  # refuses every instance
    node, cfg = stow_node(ckpt, tmp_path / "state", server.url)
    scans = [make_radiograph(tmp_path / f"s{i}.dcm", seed=i) for i in range(2)]
    rejected = tmp_path / "state/results/rejected"
    outbox = tmp_path / "state/results/outbox"
    try:
        assert c_store(cfg["port"], scans[:1]) == [0]
        wait_for(lambda: len(list(rejected.glob("*.dcm"))) == 1, timeout=30)  # 2 refusals
        assert len(server.requests) == 2
        server.status = 503  # the server is in trouble: the result waits in the outbox
        assert c_store(cfg["port"], scans[1:]) == [0]
        wait_for(lambda: node.metrics.snapshot()["send_errors"] >= 5, timeout=30)
        assert len(list(outbox.glob("*.dcm"))) == 1 and len(list(rejected.glob("*"))) == 1
        server.status = 200
        wait_for(lambda: node.metrics.snapshot()["sent"] == 1, timeout=30)
        assert not list(outbox.glob("*.dcm"))
    finally:
        node.stop()
        server.stop()


def test_connections_are_kept_alive_and_shared_across_sending_threads(tmp_path: Path) -> None:
    """The sender's lanes are threads that come and go with the bursts of results: they reuse
    the idle connections instead of opening (and leaving) one each."""
    server = FakeDicomWeb()
    client = StowClient(server.url)
    files = [make_radiograph(tmp_path / f"s{i}.dcm", seed=i) for i in range(4)]
    try:
        answers = []
        for path in files:  # one after the other, each from a thread of its own
            t = threading.Thread(target=lambda p=path: answers.append(client.store(p)))
            t.start()
            t.join()
        client.close()
        assert [a.outcome for a in answers] == ["stored"] * 4
    finally:
        server.stop()
    assert len(server.requests) == 4 and len(set(server.client_ports)) == 1


def test_a_server_that_is_not_there_is_waited_for_not_refused(tmp_path: Path) -> None:
    sr = make_radiograph(tmp_path / "x.dcm")
    answer = StowClient(f"http://127.0.0.1:{free_port()}/dicom-web", timeout_s=2).store(sr)
    assert answer.outcome == "unavailable"
    with pytest.raises(ValueError, match="stow_url"):
        StowClient("pacs.example/dicom-web")


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (200, b'{"00081199": {"vr": "SQ", "Value": [{}]}}', "stored"),
        (202, b"{}", "stored"),
        (202, b'{"00081198": {"vr": "SQ", "Value": [{"00081197": {"Value": [272]}}]}}', "refused"),
        (409, b'[{"00081198": {"Value": [{"00081197": {"Value": [42752]}}]}}]', "refused"),
        (400, b"bad request", "refused"),
        (413, b"", "refused"),
        (401, b"", "unavailable"),
        (403, b"", "unavailable"),
        (429, b"", "unavailable"),
        (500, b"", "unavailable"),
        (503, b"", "unavailable"),
    ],
)
def test_each_stow_answer_is_taken_as_the_standard_means_it(
    status: int, body: bytes, outcome: str
) -> None:
    answer = judge(status, body)
    assert answer.outcome == outcome
    if status == 409:
        assert "0xA700" in answer.reason  # the failure reason is logged


def test_results_stowed_to_orthanc_dicomweb(ckpt: Path, tmp_path: Path) -> None:
    """The real thing: Orthanc's DICOMweb plugin stores each SR sent by STOW-RS."""
    import shutil

    from tests.test_serve import c_store
    from tests.test_serve_e2e import orthanc_instances, start_orthanc

    if shutil.which("Orthanc") is None or not DICOMWEB_PLUGIN.exists():
        pytest.skip("needs Debian's orthanc and orthanc-dicomweb")
    orthanc, http, _ = start_orthanc(
        tmp_path / "orthanc", free_port(), Plugins=[str(DICOMWEB_PLUGIN)]
    )
    node, cfg = stow_node(ckpt, tmp_path / "state", f"http://127.0.0.1:{http}/dicom-web/")
    scans = [make_radiograph(tmp_path / f"s{i}.dcm", seed=i) for i in range(3)]
    try:
        assert c_store(cfg["port"], scans) == [0, 0, 0]
        wait_for(lambda: node.metrics.snapshot()["sent"] == 3, timeout=60)
        time.sleep(0.5)
        got = orthanc_instances(http)
        assert sorted(t["StudyInstanceUID"] for t in got) == sorted(
            str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in scans
        )
        assert {t["SOPClassUID"] for t in got} == {COMPREHENSIVE_3D_SR}
    finally:
        node.stop()
        orthanc.terminate()
        orthanc.wait(timeout=30)
