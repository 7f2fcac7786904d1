"""glibc malloc settings for a process that runs a model from threads other than its main one."""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)
# mallopt(3) parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD_MB = 32  # glibc's largest on 64-bit hosts: blocks below it come from the arenas
TRIM_THRESHOLD_MB = 128  # freed memory kept at the top of a heap before it goes back to the kernel
TOP_PAD_MB = 64  # an emptied heap of a thread's arena is kept, not unmapped


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of giving it back at once.

    glibc gives each thread but the main one an arena of 64 MB heaps, and unmaps a heap as soon as
    it is empty. A model run from such a thread (the node's worker) gets its activations from
    fresh pages in every batch: measured here, ~5,900 minor page faults per batch of 8 images at
    224 px, 1.3-1.8 ms of kernel time per image (~5% of the forward pass), where the same forward
    in the main thread makes none. With these settings the freed blocks are reused. The cost:
    each thread's arena keeps its high-water mark instead of handing memory back (for the node:
    its peak batch's activations in the model's thread, the largest received instances in the
    receiving threads), and blocks up to 32 MB come from the arenas. The settings are
    process-wide, and setting one turns off glibc's adaptive thresholds, so all three are set.

    Returns:
        True when set; False where the C library has no ``mallopt`` (not glibc) or refused one.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD_MB),
        (M_TRIM_THRESHOLD, TRIM_THRESHOLD_MB),
        (M_TOP_PAD, TOP_PAD_MB),
    )
    ok = all([mallopt(param, mb << 20) == 1 for param, mb in settings])
    if not ok:
        log.warning("malloc settings refused: freed memory may go back to the kernel per batch")
    return ok
