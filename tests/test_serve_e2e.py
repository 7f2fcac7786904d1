"""End to end with real parts nobody here wrote: DCMTK's storescu sends radiographs to the node,
which sends its SR and Secondary Capture to Orthanc (the PACS), checked through Orthanc's REST API.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from chestxr.serve.spool import spool_key
from tests.test_serve import free_port, make_checkpoint, make_radiograph, node_config, wait_for

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


def dcmtk_storescu() -> str | None:
    """DCMTK's storescu (pynetdicom installs a script of the same name: skip that one)."""
    for cand in ("/usr/bin/storescu", shutil.which("storescu")):
        if cand and Path(cand).is_file():
            out = subprocess.run([cand, "--version"], capture_output=True, text=True)
            if "dcmtk" in (out.stdout + out.stderr).lower():
                return cand
    return None


def start_orthanc(
    tmp: Path,
    node_port: int,
    http: int | None = None,
    dicom: int | None = None,
    **settings: object,
) -> tuple[subprocess.Popen, int, int]:
    """Orthanc on loopback ports (free ones unless given) with its own storage under ``tmp``
    (started again on the same ``tmp`` it keeps what it stored), ``settings`` added to its
    configuration; returns (process, http, dicom)."""
    http, dicom = http or free_port(), dicom or free_port()
    config = {
        "Name": "chestxr-test",
        "StorageDirectory": str(tmp / "storage"),
        "IndexDirectory": str(tmp / "index"),
        "HttpPort": http,
        "DicomPort": dicom,
        "DicomAet": "ORTHANC",
        "HttpBind": "127.0.0.1",
        "DicomBind": "127.0.0.1",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomModalities": {"chestxr": ["CHESTXR", "127.0.0.1", node_port]},
        "Plugins": [],
        **settings,
    }
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "orthanc.json").write_text(json.dumps(config))
    log = open(tmp / "orthanc.log", "a")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen(
        [shutil.which("Orthanc") or "Orthanc", str(tmp / "orthanc.json")],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_for(lambda: _up(http), timeout=30)
    return proc, http, dicom


def _up(http: int) -> bool:
    try:
        rest(http, "/statistics")
        return True
    except OSError:
        return False


def rest(http: int, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{http}{path}", timeout=5) as r:
        return json.load(r)


def orthanc_instances(http: int) -> list[dict]:
    return [rest(http, f"/instances/{i}/tags?simplify") for i in rest(http, "/instances")]


def results_by_source(http: int, good: list[Path]) -> list[tuple[pydicom.Dataset, list[dict]]]:
    """Each good source with its instances in Orthanc: exactly an SR and an SC in its study."""
    tags = orthanc_instances(http)
    assert len(tags) == 2 * len(good)
    out = []
    for path in good:
        src = pydicom.dcmread(path, stop_before_pixels=True)
        mine = [t for t in tags if t["StudyInstanceUID"] == src.StudyInstanceUID]
        assert sorted(t["SOPClassUID"] for t in mine) == sorted([SR_CLASS, SC_CLASS])
        out.append((src, mine))
    return out


def test_storescu_to_node_to_orthanc(tmp_path: Path) -> None:
    storescu = dcmtk_storescu()
    if shutil.which("Orthanc") is None or storescu is None:
        pytest.skip("needs Debian's orthanc and dcmtk (apt-get install orthanc dcmtk)")
    from chestxr.serve.node import Node

    ckpt = make_checkpoint(tmp_path / "model.ckpt")
    (tmp_path / "in").mkdir()
    good = [make_radiograph(tmp_path / f"in/g{i}.dcm", seed=i) for i in range(3)]
    lateral = make_radiograph(tmp_path / "in/lat.dcm", seed=9, ViewPosition="LATERAL")
    cfg = node_config(ckpt, tmp_path / "state", allowed_calling_ae_titles=["ME"])
    orthanc, http, dicom = start_orthanc(tmp_path / "orthanc", cfg["port"])
    cfg["destination"] = {"host": "127.0.0.1", "port": dicom, "ae_title": "ORTHANC"}
    node = Node(cfg).start()
    try:
        files = [str(p) for p in [*good, lateral]]
        sent = subprocess.run(
            [storescu, "-aet", "ME", "-aec", "CHESTXR", "127.0.0.1", str(cfg["port"]), *files],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stderr
        refused = subprocess.run(
            [
                storescu,
                "-aet",
                "STRANGER",
                "-aec",
                "CHESTXR",
                "127.0.0.1",
                str(cfg["port"]),
                *files[:1],
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode != 0  # unknown calling AE title
        wait_for(lambda: len(rest(http, "/instances")) >= 2 * len(good), timeout=120)
        outbox = tmp_path / "state/results/outbox"
        # Orthanc lists an instance before its answer reaches the node: wait for every file to
        # be recorded and sent, then a moment more (room for a duplicate, which would show)
        wait_for(
            lambda: node.spool.counts()["pending"] == 0 and not list(outbox.glob("*.dcm")),
            timeout=30,
        )
        time.sleep(1.0)
        for src, mine in results_by_source(http, good):
            for t in mine:
                assert t["PatientID"] == src.PatientID
        record = node.spool.record(spool_key(pydicom.dcmread(lateral).SOPInstanceUID))
        assert record["state"] == "failed" and "ViewPosition is 'LATERAL'" in record["reason"]
        assert not list(outbox.glob("*.dcm"))  # all sent
    finally:
        node.stop()
        orthanc.terminate()
        orthanc.wait(timeout=30)


# storescu's option proposing a file's compressed transfer syntax (else it converts or fails)
STORESCU_PROPOSE = {
    "1.2.840.10008.1.2.4.50": "-xy",  # JPEG baseline
    "1.2.840.10008.1.2.4.51": "-xx",  # JPEG extended (12 bit)
    "1.2.840.10008.1.2.4.70": "-xs",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80": "-xt",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "-xu",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": "-xv",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "-xw",  # JPEG 2000
}
REAL_GOOD = (
    "pylibjpeg-data/RG1_J2KI.dcm",  # CR, CHEST PA, JPEG 2000
    "highdicom/dx_image.dcm",  # DX, THORAX, no view, uncompressed
    "dcmfx-fo-dicom/CR-ModalitySequenceLUT.dcm",  # CR, no body part or view, JPEG lossless
)
REAL_CORRUPT = "pylibjpeg-data/RG2_JPLY.dcm"  # CR, HIP, 12-bit JPEG Extended that no decoder reads


@pytest.mark.slow
def test_storescu_sends_real_radiographs_to_node_to_orthanc(
    shared_data: Path, tmp_path: Path
) -> None:
    """Real radiographs (compressed ones too) by DCMTK's storescu: SR and SC in Orthanc for each
    good one, a failure record with its reason for the corrupt one."""
    storescu = dcmtk_storescu()
    if shutil.which("Orthanc") is None or storescu is None:
        pytest.skip("needs Debian's orthanc and dcmtk (apt-get install orthanc dcmtk)")
    from chestxr.serve.node import Node

    xray = shared_data / "dicom" / "xray"
    good = [xray / name for name in REAL_GOOD]
    corrupt = xray / REAL_CORRUPT
    # the same corrupt pixel data, but labelled a chest radiograph: fails on decoding, not header
    relabelled = pydicom.dcmread(corrupt)
    relabelled.BodyPartExamined = "CHEST"
    relabelled.SOPInstanceUID = relabelled.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    relabelled.save_as(tmp_path / "corrupt_chest.dcm")
    bad = [corrupt, tmp_path / "corrupt_chest.dcm"]
    ckpt = make_checkpoint(tmp_path / "model.ckpt")
    cfg = node_config(ckpt, tmp_path / "state", allowed_calling_ae_titles=["ME"], http_port=None)
    orthanc, http, dicom = start_orthanc(tmp_path / "orthanc", cfg["port"])
    cfg["destination"] = {"host": "127.0.0.1", "port": dicom, "ae_title": "ORTHANC"}
    node = Node(cfg).start()
    try:
        cmd = [storescu, "-aet", "ME", "-aec", "CHESTXR", "127.0.0.1", str(cfg["port"])]
        for path in good + bad:  # each in its own transfer syntax, as a modality would send it
            ts = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
            option = STORESCU_PROPOSE.get(ts, "-x=")
            sent = subprocess.run(
                [*cmd, option, str(path)], capture_output=True, text=True, timeout=120
            )
            assert sent.returncode == 0, f"{path.name} ({ts}, {option}): {sent.stderr}"
        assert node.metrics.snapshot()["received"] == len(good) + len(bad)
        wait_for(lambda: len(rest(http, "/instances")) >= 2 * len(good), timeout=300)
        wait_for(lambda: node.spool.counts()["pending"] == 0, timeout=120)
        time.sleep(1.0)
        for src, _ in results_by_source(http, good):
            assert node.spool.record(spool_key(src.SOPInstanceUID))["state"] == "done"
        header = node.spool.record(spool_key(pydicom.dcmread(corrupt).SOPInstanceUID))
        assert header["state"] == "failed" and "BodyPartExamined is 'HIP'" in header["reason"]
        pixels = node.spool.record(spool_key(str(relabelled.SOPInstanceUID)))
        assert pixels["state"] == "failed"
        assert pixels["reason"].startswith("unreadable: pixel data could not be decoded")
    finally:
        node.stop()
        orthanc.terminate()
        orthanc.wait(timeout=30)
