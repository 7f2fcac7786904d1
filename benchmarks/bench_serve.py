"""Load benchmark of the DICOM AI node (not a test): ``python benchmarks/bench_serve.py [N]``.

N synthetic radiographs over 4 concurrent associations into an in-process node (Grad-CAM off)
whose destination is a real Orthanc; prints throughput against the bare batched forward of the
same model on this machine, and p50/p95 latency from reception to the result stored in Orthanc.
Needs Debian's ``orthanc``.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_serve import c_store, make_checkpoint, make_radiograph, node_config, wait_for
from tests.test_serve_e2e import rest, start_orthanc


def main(n: int = 64, associations: int = 4) -> None:
    from chestxr.serve.node import Node
    from chestxr.serve.worker import Scorer

    tmp = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    ckpt = make_checkpoint(tmp / "m.ckpt")
    (tmp / "in").mkdir()
    files = [make_radiograph(tmp / f"in/{i}.dcm", seed=i, size=256) for i in range(n)]
    # bare batched forward: preprocessing + model, same batch size, no network or DICOM writing
    scorer = Scorer(ckpt, cams=False)
    t = time.perf_counter()
    for i in range(0, n, 8):
        scorer.score(torch.stack([scorer.prepare(p) for p in files[i : i + 8]]))
    bare = n / (time.perf_counter() - t)

    cfg = node_config(ckpt, tmp / "state", cams=False, batch_size=8, http_port=None)
    orthanc, http, dicom = start_orthanc(tmp / "orthanc", cfg["port"])
    cfg["destination"] = {"host": "127.0.0.1", "port": dicom, "ae_title": "ORTHANC"}
    node = Node(cfg).start()
    try:
        t = time.perf_counter()
        chunks = [files[i::associations] for i in range(associations)]
        threads = [threading.Thread(target=c_store, args=(cfg["port"], c)) for c in chunks]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wait_for(lambda: len(rest(http, "/instances")) >= n, timeout=600)
        served = n / (time.perf_counter() - t)
        snap = node.metrics.snapshot()
    finally:
        node.stop()
        orthanc.terminate()
        orthanc.wait()
    print(f"N={n} over {associations} associations, 256 px sources, 64 px model, CAMs off")
    print(f"bare batched forward (preprocess + model): {bare:.1f} img/s")
    print(f"node, C-STORE in -> SR stored in Orthanc:  {served:.1f} img/s ({served / bare:.2f} x)")
    print(
        f"latency reception -> in Orthanc: p50 {snap['latency_sent_p50_s']} s, "
        f"p95 {snap['latency_sent_p95_s']} s; scored p95 {snap['latency_scored_p95_s']} s"
    )
    print({k: snap[k] for k in ("received", "scored", "failed", "sent", "send_errors")})


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 64)
