"""glibc malloc settings: a model's activations in a thread reuse freed memory."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# activations of a ResNet's stem (8 x 64 x 112 x 112 float32, ~26 MB each), six alive at once,
# allocated and freed again in a thread other than the main one, as the node's worker does
SCRIPT = """
import json, resource, sys, threading
import torch
from chestxr.utils.allocator import keep_freed_memory
tuned = keep_freed_memory() if sys.argv[1] == "1" else None
def batch():
    xs = [torch.ones(8, 64, 112, 112) for _ in range(6)]
    return float(sum(x[0, 0, 0, 0] for x in xs))
def run(out):
    for _ in range(3):
        batch()
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    for _ in range(10):
        batch()
    out.append((resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before) / 10)
out = []
t = threading.Thread(target=run, args=(out,))
t.start()
t.join()
print(json.dumps({"tuned": tuned, "faults_per_batch": out[0]}))
"""


def faults_per_batch(tuned: bool) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, "1" if tuned else "0"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc: Linux only")
def test_a_thread_reuses_freed_memory_instead_of_faulting_it_in_again():
    kept = faults_per_batch(tuned=True)  # in a process of its own: the settings are global
    if not kept["tuned"]:
        pytest.skip("this C library has no mallopt (not glibc)")
    default = faults_per_batch(tuned=False)
    if default["faults_per_batch"] < 1000:
        n = default["faults_per_batch"]
        pytest.skip(f"this malloc keeps freed memory already ({n:.0f} faults per batch)")
    # ~15,000 page faults per batch by default (each 26 MB block mapped afresh); a few once kept
    assert kept["faults_per_batch"] < 0.05 * default["faults_per_batch"], (default, kept)
