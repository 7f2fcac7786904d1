"""Scale: a 200,000-row manifest loads, validates and splits by patient (target < 10 s, < 1 GB).

Run: ``python benchmarks/bench_manifest.py`` (writes ``benchmarks/results/manifest.json``).
"""

from __future__ import annotations

import csv
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from results_file import write_result  # benchmarks/results_file.py, beside this script

from chestxr.data.manifest import load_manifest
from chestxr.data.splits import assign_splits


def main(n: int = 200_000) -> dict:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.csv"
        labels = np.where(rng.random(n) < 0.2, "Pneumonia", "No Finding")
        pids = rng.integers(0, 60_000, n)
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label", "patient_id", "view", "sex", "age"])
            w.writerows(
                [f"/data/{i:06d}.dcm", labels[i], f"P{pids[i]}", "PA", "F", "50"] for i in range(n)
            )
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        m = load_manifest(
            path, task="binary", classes=["No Finding", "Pneumonia"], check_files=False
        )
        t1 = time.perf_counter()
        splits = assign_splits(m.patient_ids, m.targets, m.splits)
        t2 = time.perf_counter()
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {
        "rows": n,
        "load_s": round(t1 - t0, 2),
        "split_s": round(t2 - t1, 2),
        "total_s": round(t2 - t0, 2),
        "peak_rss_mb": round(rss1 / 1024, 1),
        "rss_growth_mb": round((rss1 - rss0) / 1024, 1),
        "splits": {s: int((splits == s).sum()) for s in ("train", "val", "test")},
        "target": "total_s < 10 and peak_rss_mb < 1024",
    }
    write_result("manifest", result)
    return result


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000)
