"""The preprocessing cache at scale: a 200,000-entry store built from small images.

Builds a :class:`chestxr.data.cache.CacheStore` entry by entry, as a first pass does (one SQLite
transaction and one shard append per scan), from random 32 x 32 images with synthetic source
identities (no 200,000 files on disk), then reads a random sample back. Reports build time, read
rate, bytes per entry, shard and index sizes, and the peak memory of the process (run it in a
fresh process: ``run.py`` does).

Run alone: ``python benchmarks/bench_cache.py [entries]``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from chestxr.data.cache import CacheStore

log = logging.getLogger("benchmarks.cache")


def main(entries: int = 200_000, px: int = 32, sample: int = 20_000) -> dict[str, Any]:
    """Build an ``entries``-scan store of ``px`` x ``px`` images; read ``sample`` of them back."""
    rng = np.random.default_rng(0)
    pool = rng.random((256, 1, px, px), dtype=np.float32)  # distinct enough, cheap to draw
    with tempfile.TemporaryDirectory() as tmp:
        store = CacheStore(Path(tmp) / "store", settings="bench")
        keys = [hashlib.sha256(f"scan-{i}".encode()).hexdigest() for i in range(entries)]
        t0 = time.perf_counter()
        for i, key in enumerate(keys):
            store.put(f"/data/scan-{i}.dcm", pool[i % 256], {"orig_shape": [px, px]}, key=key)
        build_s = time.perf_counter() - t0
        order = rng.choice(entries, size=min(sample, entries), replace=False)
        store.close()  # a fresh process reads it: maps and connection opened lazily
        reader = CacheStore(Path(tmp) / "store", settings="bench")
        t0 = time.perf_counter()
        for i in order:
            image, _ = reader.get(f"/data/scan-{i}.dcm", key=keys[i])
        read_s = time.perf_counter() - t0
        assert np.abs(image - pool[order[-1] % 256]).max() < 1e-5
        stats = reader.stats()
        index = sum(p.stat().st_size for p in (Path(tmp) / "store").glob("index.sqlite*"))
        shards = len(list((Path(tmp) / "store").glob("shard-*.bin")))
    return {
        "entries": entries,
        "px": px,
        "build_s": build_s,
        "build_per_s": entries / build_s,
        "read_per_s": len(order) / read_s,
        "shard_bytes_per_entry": stats["shard_bytes"] / entries,
        "index_bytes_per_entry": index / entries,
        "shards": shards,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000), indent=2))
