"""prefetch: reads ahead in a thread, keeps order, passes errors on, stops with its consumer."""

from __future__ import annotations

import threading

import pytest

from chestxr.data.prefetch import prefetch


def test_order_is_kept_and_every_item_arrives() -> None:
    assert list(prefetch(iter(range(100)), depth=3)) == list(range(100))
    assert list(prefetch(range(5), depth=0)) == list(range(5))
    assert list(prefetch([], depth=2)) == []


def test_the_next_item_is_read_while_the_consumer_holds_this_one() -> None:
    second_read = threading.Event()

    def items():
        yield 1
        second_read.set()
        yield 2

    it = prefetch(items(), depth=1)
    assert next(it) == 1
    # the consumer has not asked for item 2, yet it is being read: reading overlaps the work
    assert second_read.wait(timeout=10)
    assert next(it) == 2


def test_depth_zero_reads_in_the_callers_thread() -> None:
    threads = []

    def items():
        threads.append(threading.current_thread())
        yield 0

    list(prefetch(items(), depth=0))
    assert threads == [threading.current_thread()]


def test_an_error_while_reading_reaches_the_consumer_after_the_items_before_it() -> None:
    def items():
        yield "a"
        raise ValueError("scan 7 is corrupt")

    it = prefetch(items(), depth=2)
    assert next(it) == "a"
    with pytest.raises(ValueError, match="scan 7 is corrupt"):
        next(it)


def test_a_consumer_that_stops_early_stops_the_reader() -> None:
    produced = []

    def items():
        for i in range(10_000):
            produced.append(i)
            yield i

    it = prefetch(items(), depth=2)
    assert next(it) == 0
    it.close()  # as a `break` out of the loop does
    assert not any(t.name == "chestxr-prefetch" and t.is_alive() for t in threading.enumerate())
    assert len(produced) <= 5  # the reader stopped within its read-ahead, not at the end


def test_negative_depth_is_refused() -> None:
    with pytest.raises(ValueError, match="depth"):
        list(prefetch([1], depth=-1))
