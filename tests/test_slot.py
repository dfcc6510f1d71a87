"""LatestFrameSlot: latest wins, counts drops, times out, and close() wakes a blocked reader."""

from __future__ import annotations

import threading
import time

from engine.core.slot import LatestFrameSlot


def test_latest_wins_and_dropped_counts_overwrites():
    slot: LatestFrameSlot[int] = LatestFrameSlot()
    for i in range(5):
        slot.put(i)
    assert slot.get(timeout=0) == 4
    assert slot.dropped == 4
    slot.put(5)
    assert slot.get(timeout=0) == 5
    assert slot.dropped == 4  # taken before the next put: not a drop


def test_get_waits_for_a_newer_item_and_times_out():
    slot: LatestFrameSlot[str] = LatestFrameSlot()
    start = time.perf_counter()
    assert slot.get(timeout=0.05) is None
    assert time.perf_counter() - start >= 0.04
    slot.put("a")
    assert slot.get(timeout=0) == "a"
    assert slot.get(timeout=0.01) is None  # the same item is never handed out twice
    assert slot.peek_latest() == "a"  # ... but stays visible without consuming


def test_peek_does_not_consume():
    slot: LatestFrameSlot[int] = LatestFrameSlot()
    assert slot.peek_latest() is None
    slot.put(1)
    assert slot.peek_latest() == 1
    assert slot.get(timeout=0) == 1


def test_get_wakes_on_put_from_another_thread():
    slot: LatestFrameSlot[int] = LatestFrameSlot()
    timer = threading.Timer(0.02, slot.put, args=(7,))
    timer.start()
    assert slot.get(timeout=2.0) == 7
    timer.join()


def test_close_wakes_a_waiter_and_ignores_later_puts():
    slot: LatestFrameSlot[int] = LatestFrameSlot()
    result: list[int | None] = []
    reader = threading.Thread(target=lambda: result.append(slot.get(timeout=10.0)))
    reader.start()
    time.sleep(0.02)
    slot.close()
    reader.join(timeout=1.0)
    assert not reader.is_alive()
    assert result == [None]
    slot.put(1)
    assert slot.get(timeout=0) is None
    assert slot.closed


def test_wait_read_says_whether_the_newest_item_was_handed_to_a_reader():
    slot: LatestFrameSlot[int] = LatestFrameSlot()
    assert slot.wait_read(timeout=0)  # nothing put yet: a producer may make the first
    slot.put(1)
    assert not slot.wait_read(timeout=0)
    assert slot.get(timeout=0) == 1 and slot.wait_read(timeout=0)
    slot.put(2)
    assert slot.latest() == (2, 2) and slot.wait_read(timeout=0)  # a reader that keeps its own mark counts
    slot.put(3)
    assert slot.wait_newer(2, timeout=0) == (3, 3) and slot.wait_read(timeout=0)
    slot.put(4)
    slot.close()
    assert slot.wait_read(timeout=0)  # closed: nothing to wait for
