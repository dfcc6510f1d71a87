"""The duration of the changes that follow (`/transition`, `/transition/frames`, `/transition/beats`,
`/transition/bars`): one per control surface, that is one per engine, so a transition set from OSC also times
the next change from the page or MIDI."""

from __future__ import annotations

import threading
from typing import Any

from engine.core.errors import DreamwireError
from engine.live.transitions import Duration

MAX_BEATS = 1024  # beats or bars; the tempo then checks the length in seconds
UNITS = ("seconds", "frames", "beats", "bars")


class NextDuration:
    """Seconds, output frames, beats or bars for every change sent after it is set (none: a cut)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # transports run on their own threads
        self._unit: str | None = None
        self._length: float | int | None = None

    def set_seconds(self, seconds: float) -> None:
        Duration(seconds=seconds)  # the range check: one line naming the value
        self._set("seconds", seconds)

    def set_frames(self, frames: int) -> None:
        Duration(frames=frames)
        self._set("frames", frames)

    def set_beats(self, beats: float) -> None:
        """Beats (or bars): measured on the beat clock while each change moves (engine/live/transitions.py)."""
        self._set_beats("beats", beats)

    def set_bars(self, bars: float) -> None:
        self._set_beats("bars", bars)

    def _set_beats(self, unit: str, length: float) -> None:
        if isinstance(length, bool) or not isinstance(length, int | float) or not 0 <= length <= MAX_BEATS:
            raise DreamwireError(f"transition {unit} {length!r} is not a number in [0, {MAX_BEATS}]")
        self._set(unit, length)

    def _set(self, unit: str, length: float | int) -> None:
        with self._lock:
            self._unit, self._length = unit, length

    def get(self, unit: str) -> float | int | None:
        return self._length if self._unit == unit else None

    @property
    def seconds(self) -> float | None:
        return self.get("seconds")  # type: ignore[return-value]

    @property
    def frames(self) -> int | None:
        return self.get("frames")  # type: ignore[return-value]

    def kwargs(self) -> dict[str, Any]:
        """`seconds=`, `frames=`, `beats=` or `bars=` for LiveEngine.set / blend_prompts / blend_seeds."""
        with self._lock:
            if self._unit is None:
                return {"seconds": None, "frames": None}
            return {"seconds": None, "frames": None, self._unit: self._length}
