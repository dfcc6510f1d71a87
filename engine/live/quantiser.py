"""Beat-quantised changes: a change that says "on the next beat / bar / 2 bars / 4 bars" carries the beat it is for
(`at_beat`, worked out where it is sent: engine/live/tempo.py). The engine thread holds it here when it comes off
the control queue, and applies it at the first frame boundary at or after its beat's time minus the lookahead
(`tempo.latency_ms`), never before. Owned by the engine thread (not thread-safe).
"""

from __future__ import annotations

import heapq
from itertools import count

from engine.live.beat_clock import BeatClock
from engine.live.controls import Control


class Quantiser:
    def __init__(self, clock: BeatClock) -> None:
        self.clock = clock
        self._held: list[tuple[float, int, Control]] = []  # heap of (beat, order, control): ties keep their order
        self._order = count()

    def hold(self, control: Control) -> bool:
        """Keep `control` until its beat; False (apply it now) when it has none or its moment has come."""
        beat = getattr(control, "at_beat", None)
        if beat is None or self.clock.due(beat):
            return False
        heapq.heappush(self._held, (beat, next(self._order), control))
        return True

    def due(self) -> list[Control]:
        """The held changes whose moment has come, oldest beat first (an empty list, allocated, only then)."""
        held = self._held
        if not held or not self.clock.due(held[0][0]):
            return _NONE
        ready = []
        while held and self.clock.due(held[0][0]):
            ready.append(heapq.heappop(held)[2])
        return ready

    def release_all(self) -> list[Control]:
        """Everything held, in beat order (the engine stops: nothing is lost unreported)."""
        ready = [item[2] for item in sorted(self._held)]
        self._held.clear()
        return ready

    def __len__(self) -> int:
        return len(self._held)


_NONE: list[Control] = []  # never appended to
