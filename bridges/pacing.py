"""Drift-free pacing for sources: frame n is due at start + n/fps, not after n cumulative sleeps (aiortc's way)."""

from __future__ import annotations

import math
import time

from engine.core.errors import DreamwireError

STALL_RESTART_S = 1.0  # a reader this late restarts the clock instead of bursting to catch up


class Pacer:
    """Sleeps until each frame index is due at `fps` frames per second (0 or None: never sleeps)."""

    def __init__(self, fps: float | None, what: str) -> None:
        if fps is not None and (fps < 0 or not math.isfinite(fps)):
            raise DreamwireError(f"{what} fps={fps} is invalid: use a rate > 0, or 0 for unpaced")
        self.fps = fps or 0.0
        self._clock_start = 0.0  # perf_counter seconds when frame _clock_index was due
        self._clock_index = 0

    def restart(self, index: int) -> None:
        """Frame `index` is due now (on open, and after a stall)."""
        self._clock_start, self._clock_index = time.perf_counter(), index

    def wait(self, index: int) -> None:
        """Block until frame `index` is due."""
        if not self.fps:
            return
        due = self._clock_start + (index - self._clock_index) / self.fps
        now = time.perf_counter()
        if now < due:
            time.sleep(due - now)
        elif now - due > STALL_RESTART_S:
            self.restart(index)


def paced_by_reader(source: object) -> bool:
    """True for a source with no rate of its own (pattern or file at fps=0): its worker reads the next frame only
    once the last one has been read, so an unpaced source runs at its reader's rate instead of spinning a core."""
    pacer = getattr(source, "pacer", None)
    return isinstance(pacer, Pacer) and not pacer.fps
