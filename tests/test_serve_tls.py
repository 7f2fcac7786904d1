"""DICOM TLS on both sides of the node: the SCP (client certificates from its CA only) and the
results sent to a PACS over TLS (its certificate verified). Certificates are made by the
``openssl`` command line for each test run; the tests skip where it is absent."""

from __future__ import annotations

import re
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from chestxr.serve.scp import destination_tls_context, tls_context
from chestxr.serve.sender import COMPREHENSIVE_3D_SR
from tests.test_serve import (
    FakePacs,
    free_port,
    make_checkpoint,
    make_radiograph,
    node_config,
    wait_for,
)

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(not OPENSSL, reason="needs the openssl command (certificates)")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True)


def _ca(folder: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip


def _leaf(folder: Path, name: str, ca: str, usage: str) -> None:
    """A certificate for ``name`` signed by ``ca`` (``serverAuth`` for 127.0.0.1, or
    ``clientAuth``)."""
    ext = folder / f"{name}.ext"
    ext.write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        f"extendedKeyUsage={usage}\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
        cwd=folder,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", ext.name,
        cwd=folder,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A hospital CA with a server and a client certificate, and a rogue CA with a client."""
    folder = tmp_path_factory.mktemp("pki")
    _ca(folder, "ca")
    _ca(folder, "rogue")
    _leaf(folder, "server", "ca", "serverAuth")
    _leaf(folder, "client", "ca", "clientAuth")
    _leaf(folder, "intruder", "rogue", "clientAuth")
    return folder


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("model") / "model.ckpt")


def client_context(pki: Path, cert: str | None) -> ssl.SSLContext:
    """A modality's TLS context trusting the hospital CA, presenting ``cert`` (or none)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / "ca.crt"))
    if cert:
        ctx.load_cert_chain(str(pki / f"{cert}.crt"), str(pki / f"{cert}.key"))
    return ctx


def tls_store(port: int, path: Path, ctx: ssl.SSLContext | None) -> int | None:
    """C-STORE one file (over TLS with ``ctx``); None when no association could be made."""
    from pynetdicom import AE

    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.network_timeout = 5
    ae.add_requested_context(
        str(pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID), ExplicitVRLittleEndian
    )
    tls = (ctx, "127.0.0.1") if ctx is not None else None
    assoc = ae.associate("127.0.0.1", port, ae_title="CHESTXR", tls_args=tls)
    if not assoc.is_established:
        return None
    try:
        return int(assoc.send_c_store(pydicom.dcmread(path)).Status)
    finally:
        assoc.release()


def test_the_scp_over_tls_takes_only_clients_with_a_certificate_from_its_ca(
    ckpt: Path, pki: Path, tmp_path: Path
) -> None:
    from chestxr.serve.node import Node

    tls = {k: str(pki / f) for k, f in (("cert", "server.crt"), ("key", "server.key"))}
    cfg = node_config(
        ckpt, tmp_path / "state", http_port=None, cams=False, tls={**tls, "ca": str(pki / "ca.crt")}
    )
    scans = [make_radiograph(tmp_path / f"s{i}.dcm", seed=i) for i in range(4)]
    node = Node(cfg).start()
    try:
        assert tls_store(cfg["port"], scans[0], client_context(pki, "client")) == 0
        assert tls_store(cfg["port"], scans[1], client_context(pki, None)) is None  # no cert
        assert tls_store(cfg["port"], scans[2], client_context(pki, "intruder")) is None
        assert tls_store(cfg["port"], scans[3], None) is None  # plain DICOM to a TLS port
        wait_for(lambda: node.spool.counts()["done"] == 1)
        assert node.metrics.snapshot()["received"] == 1
    finally:
        node.stop()


def test_results_go_to_a_tls_pacs_and_wait_while_its_certificate_is_not_trusted(
    ckpt: Path, pki: Path, tmp_path: Path
) -> None:
    from chestxr.serve.node import Node

    pacs_tls = tls_context(str(pki / "server.crt"), str(pki / "server.key"), str(pki / "ca.crt"))
    pacs = FakePacs(free_port()).start(ssl_context=pacs_tls)  # requires a client certificate
    ours = {"cert": str(pki / "client.crt"), "key": str(pki / "client.key")}
    scan = make_radiograph(tmp_path / "scan.dcm", seed=7)
    try:
        for name, ca, arrives in (("rogue", "rogue.crt", False), ("hospital", "ca.crt", True)):
            dest = {"host": "127.0.0.1", "port": pacs.port, "ae_title": "PACS"}
            dest["tls"] = {"ca": str(pki / ca), **ours}
            cfg = node_config(ckpt, tmp_path / name, http_port=None, cams=False, destination=dest)
            node = Node(cfg).start()
            try:
                assert tls_store(cfg["port"], scan, None) == 0
                if arrives:
                    wait_for(lambda n=node: n.metrics.snapshot()["sent"] == 1, timeout=30)
                else:  # the PACS's certificate is not from the CA we trust: nothing is sent
                    wait_for(lambda n=node: n.metrics.snapshot()["send_errors"] >= 2, timeout=30)
                    assert node.metrics.snapshot()["sent"] == 0
                    assert len(list((tmp_path / name / "results/outbox").glob("*.dcm"))) == 1
            finally:
                node.stop()
        per_source = pacs.results_per_source()
        source = str(pydicom.dcmread(scan, stop_before_pixels=True).SOPInstanceUID)
        assert per_source == {source: {COMPREHENSIVE_3D_SR: 1}}
    finally:
        pacs.stop()


def test_tls_settings_that_cannot_work_are_refused_naming_the_key(pki: Path) -> None:
    assert destination_tls_context(None) is None  # TLS off
    assert isinstance(destination_tls_context(str(pki / "ca.crt")), ssl.SSLContext)
    with pytest.raises(FileNotFoundError, match=re.escape("destination.tls.ca")):
        destination_tls_context(str(pki / "nope.crt"))
    with pytest.raises(ValueError, match=re.escape("destination.tls.cert and destination.tls.key")):
        destination_tls_context(str(pki / "ca.crt"), cert=str(pki / "client.crt"))
    with pytest.raises(ValueError, match=re.escape("destination.tls.ca is needed")):
        destination_tls_context(None, str(pki / "client.crt"), str(pki / "client.key"))
    with pytest.raises(ValueError, match=re.escape("tls.cert and tls.key")):
        tls_context(str(pki / "server.crt"), None)
    with pytest.raises(FileNotFoundError, match=re.escape("tls.key")):
        tls_context(str(pki / "server.crt"), str(pki / "nope.key"))


def test_storescu_over_tls_to_the_node_over_tls_to_orthanc(
    ckpt: Path, pki: Path, tmp_path: Path
) -> None:
    """Real TLS peers nobody here wrote: DCMTK's storescu sends with a client certificate,
    Orthanc stores the results only from a client with a certificate from the hospital CA."""
    from tests.test_serve_e2e import dcmtk_storescu, orthanc_instances, start_orthanc

    storescu = dcmtk_storescu()
    if shutil.which("Orthanc") is None or storescu is None:
        pytest.skip("needs Debian's orthanc and dcmtk (apt-get install orthanc dcmtk)")
    from chestxr.serve.node import Node

    server = {"cert": str(pki / "server.crt"), "key": str(pki / "server.key")}
    cfg = node_config(
        ckpt,
        tmp_path / "state",
        http_port=None,
        cams=False,
        tls={**server, "ca": str(pki / "ca.crt")},
    )
    orthanc, http, dicom = start_orthanc(
        tmp_path / "orthanc",
        cfg["port"],
        DicomTlsEnabled=True,
        DicomTlsCertificate=server["cert"],
        DicomTlsPrivateKey=server["key"],
        DicomTlsTrustedCertificates=str(pki / "ca.crt"),
        DicomTlsRemoteCertificateRequired=True,
    )
    cfg["destination"] = {
        "host": "127.0.0.1",
        "port": dicom,
        "ae_title": "ORTHANC",
        "tls": {
            "ca": str(pki / "ca.crt"),
            "cert": str(pki / "client.crt"),
            "key": str(pki / "client.key"),
        },
    }
    scans = [make_radiograph(tmp_path / f"s{i}.dcm", seed=i) for i in range(2)]
    node = Node(cfg).start()
    try:

        def send(cert: str) -> subprocess.CompletedProcess:
            tls = ["+tls", str(pki / f"{cert}.key"), str(pki / f"{cert}.crt")]
            peer = ["-aet", "MODALITY", "-aec", "CHESTXR", "127.0.0.1", str(cfg["port"])]
            return subprocess.run(
                [storescu, *tls, "+cf", str(pki / "ca.crt"), *peer, *map(str, scans)],
                capture_output=True,
                text=True,
                timeout=60,
            )

        refused = send("intruder")  # a certificate from another CA
        assert refused.returncode != 0
        sent = send("client")
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: len(orthanc_instances(http)) >= len(scans), timeout=60)
        time.sleep(1.0)
        studies = sorted(t["StudyInstanceUID"] for t in orthanc_instances(http))
        wanted = sorted(str(pydicom.dcmread(p).StudyInstanceUID) for p in scans)
        assert studies == wanted  # one SR per scan, in its study
        assert node.metrics.snapshot()["received"] == len(scans)
    finally:
        node.stop()
        orthanc.terminate()
        orthanc.wait(timeout=30)


def test_a_ca_without_the_nodes_own_certificate_is_refused_not_ignored(
    ckpt: Path, pki: Path, tmp_path: Path
) -> None:
    """``tls.ca`` alone asks for client certificates, which needs TLS: the node must not start
    listening in plain DICOM as though nothing had been asked."""
    from chestxr.serve.node import Node

    cfg = node_config(ckpt, tmp_path / "state", http_port=None, tls={"ca": str(pki / "ca.crt")})
    with pytest.raises(ValueError, match=re.escape("tls.cert and tls.key")):
        Node(cfg)
