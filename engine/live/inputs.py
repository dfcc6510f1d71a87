"""Input frames for the next step: f frames gathered from the source's slot, and the dropped ones counted.

The frames themselves are counted for fps_in where the source produces them, on its own thread (the source
worker's on_frame hook, engine/live/io_threads.py): counting them here stamped a burst with the moment the engine
took one, which a slow or stalled engine turned into nonsense rates.

A slow source still fills a batch of f: frames that arrived are kept for the next call. A batch never mixes
frame sizes (the source's size changes with a rebuild to another size). The wait for a frame ends early when
`wake()` is called (a control was queued), so a control applies within one frame when no input arrives.
"""

from __future__ import annotations

from engine.core.frames import Frame
from engine.core.slot import LatestFrameSlot
from engine.live.io_bridges import IoBridges
from engine.live.metrics import EngineMetrics

FRAME_WAIT = 0.1  # s: the longest wait for an input frame before the loop looks at its controls again


class InputBatcher:
    def __init__(self, io: IoBridges, metrics: EngineMetrics) -> None:
        self._io, self._metrics = io, metrics
        self._slot: LatestFrameSlot[Frame] | None = None  # the slot collected from (a source swap makes another)
        self._collected: list[Frame] = []  # input frames gathered towards the next step's f
        self._seen_dropped = 0

    def wake(self) -> None:
        """End the current (or the next) wait for a frame: a control is waiting (any thread)."""
        self._io.input_slot.wake()

    def woken(self) -> None:
        """The controls are about to be looked at: a wake() before now has served its purpose; one after it
        still ends the next wait."""
        self._io.input_slot.clear_wake()

    def take(self, f: int) -> list[Frame] | None:
        """The next f frames, oldest first; None if they have not all arrived within FRAME_WAIT or a wake."""
        slot = self._io.input_slot
        if slot is not self._slot:
            self._slot, self._collected = slot, []
            self._seen_dropped = 0
        while len(self._collected) < f:
            frame = slot.get(timeout=FRAME_WAIT)
            self._count()
            if frame is None:
                return None
            if self._collected and self._collected[0].image.shape != frame.image.shape:
                self._collected = []  # the source's size changed: one size per batch
            self._collected.append(frame)
        frames, self._collected = self._collected[-f:], []
        return frames

    def keep_last(self, f: int) -> None:
        """A new pipeline with f frames per step: keep the newest f frames collected."""
        self._collected = self._collected[-f:]

    def _count(self) -> None:
        dropped = self._io.input_slot.dropped
        if dropped > self._seen_dropped:
            self._metrics.on_input_dropped(dropped - self._seen_dropped)
        self._seen_dropped = dropped
