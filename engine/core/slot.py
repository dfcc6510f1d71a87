"""Latest-wins hand-over between two threads: one slot, never a queue, so a slow consumer drops frames, not lags."""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class LatestFrameSlot(Generic[T]):
    """Holds the newest item; `put` overwrites, `get` waits for something newer than what it last took.

    Any number of producers and one consumer (several consumers would share the "taken" mark). Readers that keep
    their own mark (latest, wait_newer) do not take; every reader marks the newest item as read, which is what a
    producer with no rate of its own waits for (wait_read).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._seq = 0  # number of items ever put; the newest item has this sequence number
        self._taken = 0  # sequence number of the last item handed out by get()
        self._read = 0  # sequence number of the newest item any reader was handed
        self._dropped = 0
        self._closed = False
        self._woken = False  # wake() was called: the consumer's get() returns None once

    def put(self, item: T) -> None:
        """Store `item` as the newest; an unconsumed older item is dropped and counted. No-op after close()."""
        with self._cond:
            if self._closed:
                return
            if self._seq > self._taken:
                self._dropped += 1
            self._item = item
            self._seq += 1
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> T | None:
        """Block until an item newer than the last one taken exists and take it (the one consumer).

        timeout: seconds (None waits forever, 0 polls). Returns None on timeout or once the slot is closed.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._closed or self._woken or self._seq > self._taken, timeout)
            if self._closed or self._seq <= self._taken:  # closed, woken or timed out
                self._woken = False
                return None
            self._taken = self._seq  # a newer item wins over a wake, which stays for the next get()
            self._mark_read()
            return self._item

    def wake(self) -> None:
        """The consumer's current (or next) get() returns at once: None unless a newer item is there (then that
        item, and the wake stays for the get() after it), e.g. to look at something other than frames."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def clear_wake(self) -> None:
        """Forget a wake() that no get() has seen yet (what it was for has been looked at)."""
        with self._cond:
            self._woken = False

    def wait_newer(self, after: int, timeout: float | None = None) -> tuple[int, T] | None:
        """For readers that keep their own mark (several preview clients): wait for an item with a sequence
        number above `after` and return (sequence number, item) without taking it; None on timeout or close."""
        with self._cond:
            self._cond.wait_for(lambda: self._closed or self._seq > after, timeout)
            if self._closed or self._seq <= after:
                return None
            self._mark_read()
            return self._seq, self._item  # type: ignore[return-value]  # _seq > 0: an item was put

    def latest(self) -> tuple[int, T | None]:
        """(sequence number, newest item), without taking it; (0, None) before the first put."""
        with self._cond:
            self._mark_read()
            return self._seq, self._item

    def wait_read(self, timeout: float | None = None) -> bool:
        """Block until a reader has been handed the newest item (or nothing was put yet, or the slot is closed);
        False on timeout. A producer with no rate of its own makes its next item then: as fast as it is read."""
        with self._cond:
            return self._cond.wait_for(lambda: self._closed or self._read >= self._seq, timeout)

    def _mark_read(self) -> None:
        """Under the lock: the newest item was handed to a reader (wakes a producer in wait_read)."""
        if self._read < self._seq:
            self._read = self._seq
            self._cond.notify_all()

    def peek_latest(self) -> T | None:
        """The newest item ever put (taken or not), without consuming it; None if nothing was put yet."""
        return self.latest()[1]

    def close(self) -> None:
        """Wake every waiter; later get() calls return None and later put() calls are ignored."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def dropped(self) -> int:
        """How many items were overwritten before anyone took them."""
        with self._cond:
            return self._dropped

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed
