"""The queue between the senders (any thread) and the engine thread: coalesced, so a burst costs one change.

Between two frames only the newest value per parameter matters: a change sent at once (a cut) replaces a queued
cut of the same parameter in its place, and the older one ends as "superseded". A transition (a change with a
duration) and a command (pause, reset, a blend) are never merged: they keep their order, and a cut that follows
one of them for the same thing (the same `apply` group, e.g. guidance; a reset touches every group) is queued
after it, not merged into a place before it, so the last word stays the last word. t_index_list and
num_inference_steps share a group ("schedule"), so they never pass each other: each is checked against the other.

The engine takes controls one at a time (take()) with its own bound per drain, and may leave some queued: those
that wait for a running rebuild keep their place. `wake` is called after every put, so an engine that waits for
an input frame wakes for a control too.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from engine.live.controls import BlendPrompts, BlendSeeds, Control, Pause, Reset, SetValue, spec_of

_EVERYTHING = "*"  # the group of a reset: it touches all of them
_NONE: tuple[tuple[Control, int], ...] = ()  # take_superseded() with nothing to report


@dataclass
class _Entry:
    control: Control
    seq: int  # the order it was queued in (a merged change keeps its place, and so its seq)
    queued: bool = True


def group_of(control: Control) -> str:
    """What a control touches: its parameter's `apply` name, "cond" for a prompt blend, "noise" for a seed blend."""
    match control:
        case SetValue():
            return spec_of(control.path).apply
        case BlendPrompts():
            return "cond"
        case BlendSeeds():
            return "noise"
        case Pause():
            return "pause"
        case Reset():
            return _EVERYTHING


class ControlQueue:
    """Newest-per-parameter queue of controls; see the module docstring. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: deque[_Entry] = deque()
        self._cuts: dict[str, _Entry] = {}  # path -> its newest queued cut
        self._last_in_group: dict[str, int] = {}  # group -> seq of the newest entry that touches it
        self._last_reset = 0  # seq of the newest reset
        self._seq = 0
        self._superseded: list[tuple[Control, int]] = []  # (merged away, the request id that replaced it)
        self._wakers: tuple[Callable[[], None], ...] = ()

    def add_waker(self, wake: Callable[[], None]) -> None:
        """Call `wake()` (quick, never blocking) after each put."""
        with self._lock:
            self._wakers = (*self._wakers, wake)

    def put(self, control: Control) -> None:
        with self._lock:
            self._put(control)
            wakers = self._wakers
        for wake in wakers:
            wake()

    def _put(self, control: Control) -> None:
        group = group_of(control)
        cut = isinstance(control, SetValue) and control.duration.is_cut
        if cut:
            older = self._cuts.get(control.path)
            if (
                older is not None
                and older.queued
                and self._last_in_group.get(group) == older.seq  # nothing for this group queued since
                and self._last_reset < older.seq
            ):
                self._superseded.append((older.control, control.request_id))
                older.control = control  # its place, its seq: still the newest entry of its group
                return
        self._seq += 1
        entry = _Entry(control, self._seq)
        self._entries.append(entry)
        if cut:
            self._cuts[control.path] = entry
        self._last_in_group[group] = self._seq
        if group == _EVERYTHING:
            self._last_reset = self._seq

    def take(self, waits: Callable[[Control], bool] | None = None) -> Control | None:
        """The oldest queued control, or with `waits` the oldest for which waits(control) is False (the others
        keep their place); None when there is none."""
        if not self._entries:  # the common case between two frames: no lock, no allocation
            return None
        with self._lock:
            for index, entry in enumerate(self._entries):
                if waits is not None and waits(entry.control):
                    continue
                del self._entries[index]  # index 0 but for controls that wait: O(1) in the common case
                entry.queued = False
                if self._cuts.get(entry.control.path) is entry:
                    del self._cuts[entry.control.path]
                return entry.control
            return None

    def take_superseded(self) -> Sequence[tuple[Control, int]]:
        """The controls merged away since the last call, each with the request id that replaced it."""
        if not self._superseded:  # read without the lock: a merge that races this is reported on the next call
            return _NONE
        with self._lock:
            merged, self._superseded = self._superseded, []
            return merged

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def empty(self) -> bool:
        """Nothing queued and no merged-away control still to report."""
        with self._lock:
            return not self._entries and not self._superseded
