"""Scale: the patient bootstrap of an evaluation (1,000 resamples) over 1,000 and 25,000 scans
(NIH ChestX-ray14's test split is ~25,600): its intervals of every metric and its ROC band.
Target: the intervals of 25,000 scans in < 10 s.

Run: ``python benchmarks/bench_bootstrap.py [SCANS ...]`` (writes
``benchmarks/results/bootstrap.json``).
"""

from __future__ import annotations

import sys
import time

import numpy as np
from results_file import write_result  # benchmarks/results_file.py, beside this script

from chestxr.evaluation import BinaryMetrics, cluster_bootstrap, roc_band

RESAMPLES = 1000
TARGET_SCANS, TARGET_S = 25_000, 10.0


def main(sizes: tuple[int, ...] = (1000, 25_000)) -> dict:
    rows = []
    for n in sizes:
        rng = np.random.default_rng(n)
        y = rng.integers(0, 2, n).astype(float)
        p = 1 / (1 + np.exp(-((2 * y - 1) + rng.normal(0, 1, n))))
        groups = np.arange(n) // 4  # four scans per patient
        t0 = time.perf_counter()
        cluster_bootstrap(BinaryMetrics(0.5), y, p, groups, n_resamples=RESAMPLES, seed=0)
        t1 = time.perf_counter()
        roc_band(y, p, groups, n_resamples=RESAMPLES, seed=0)
        t2 = time.perf_counter()
        rows.append({"scans": n, "intervals_s": round(t1 - t0, 2), "roc_band_s": round(t2 - t1, 2)})
    result = {
        "resamples": RESAMPLES,
        "rows": rows,
        "target_scans": TARGET_SCANS,
        "target_s": TARGET_S,
        "target": f"intervals_s < {TARGET_S:g} at {TARGET_SCANS:,} scans",
    }
    write_result("bootstrap", result)
    return result


if __name__ == "__main__":
    main(tuple(int(a) for a in sys.argv[1:]) or (1000, 25_000))
