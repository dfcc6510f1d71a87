"""The duration of the changes that follow (`/transition`, `/transition/frames`): one per control surface,
that is one per engine, so a transition set from OSC also times the next change from the page or MIDI."""

from __future__ import annotations

import threading
from typing import Any

from engine.live.transitions import Duration


class NextDuration:
    """Seconds or output frames for every change sent after it is set (None, None: a cut)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # transports run on their own threads
        self._seconds: float | None = None
        self._frames: int | None = None

    def set_seconds(self, seconds: float) -> None:
        Duration(seconds=seconds)  # the range check: one line naming the value
        with self._lock:
            self._seconds, self._frames = seconds, None

    def set_frames(self, frames: int) -> None:
        Duration(frames=frames)
        with self._lock:
            self._seconds, self._frames = None, frames

    @property
    def seconds(self) -> float | None:
        return self._seconds

    @property
    def frames(self) -> int | None:
        return self._frames

    def kwargs(self) -> dict[str, Any]:
        """`seconds=` and `frames=` for LiveEngine.set / blend_prompts / blend_seeds."""
        with self._lock:
            return {"seconds": self._seconds, "frames": self._frames}
