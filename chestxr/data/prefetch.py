"""Read the next batches in a background thread while the caller computes on this one.

Inference reads each scan from disk (DICOM decode, windowing, resize) and then runs the network on
the batch; done one after the other, the cores wait on the reader half of the time. A DataLoader
worker process would overlap the two, but costs a process start per loader and a copy of every
batch; a thread costs neither, and the reader's heavy parts (file reads, NumPy, the decoders and
the network's kernels) release the GIL. Order is kept and exceptions reach the caller unchanged.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


class _Raised:
    """An exception the reader thread met, carried to the consumer."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Yield ``items`` in order, produced up to ``depth`` ahead by a background thread.

    Args:
        items: any iterable (typically a ``DataLoader``); iterated in the background thread.
        depth: most items read ahead (>= 1); 0 iterates in the caller's thread (no thread).

    Yields:
        The items of ``items``, in order.

    Raises:
        Whatever iterating ``items`` raises, with its traceback, when the consumer reaches it.
        ValueError: negative ``depth``.
    """
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    if depth == 0:
        yield from items
        return
    slots: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def hand_over(item: object) -> bool:
        """Put ``item`` in the queue unless the consumer has gone; True when put."""
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for item in items:
                if not hand_over(item):
                    return
        except BaseException as err:  # handed to the consumer, which raises it
            hand_over(_Raised(err))
            return
        hand_over(_DONE)

    reader = threading.Thread(target=read, name="chestxr-prefetch", daemon=True)
    reader.start()
    try:
        while True:
            item = slots.get()
            if item is _DONE:
                return
            if isinstance(item, _Raised):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        stop.set()  # the consumer stopped (end, error, or a break): let the reader finish
        reader.join()
