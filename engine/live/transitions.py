"""Timed transitions, so a cue can morph a parameter (a float, an embedding, a noise tensor) rather than cut.

The engine thread owns a TransitionSet: control handlers call start(), and step() calls advance() once per frame
and applies the returned values. A length is in seconds, output frames or beats; a length in beats is measured on
the beat clock (engine/live/beat_clock.py), so a tempo change while it runs moves its end to keep the beat it named.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, TypeAlias

import torch

from engine.core.errors import DreamwireError

__all__ = ["CUT", "Duration", "Easing", "Interp", "Transition", "TransitionSet", "Value", "ease", "lerp"]

Value: TypeAlias = float | torch.Tensor
# interp(start, target, t) with t in [0, 1]; blending.slerp fits (functools.partial(slerp, dim=None) for noise).
Interp: TypeAlias = Callable[[Value, Value, float], Value]
Easing: TypeAlias = Literal["linear", "smoothstep"]

_EASINGS: tuple[str, ...] = ("linear", "smoothstep")
# advance() returns this when nothing is active: read-only, shared, so an idle frame allocates nothing.
_NOTHING: Mapping[str, Value] = MappingProxyType({})


MAX_SECONDS = 3600.0
MAX_FRAMES = 100_000
MAX_BEATS = 16384  # 1024 bars of 16 beats (the most /transition/bars takes, at the largest quantum)


@dataclass(frozen=True)
class Duration:
    """How long a change takes: seconds, output frames or beats, at most one of them; none (or 0) is a cut.

    The one check of a transition's length, made where the change is sent, so what is accepted can be applied.
    Whole-number floats count as frames (controllers often send every number as a float); 2.5 frames does not.
    """

    seconds: float | None = None
    frames: int | None = None
    beats: float | None = None  # on the beat clock (bars are made beats where the change is sent)

    def __post_init__(self) -> None:
        seconds, frames, beats = self.seconds, self.frames, self.beats
        if sum(value is not None for value in (seconds, frames, beats)) > 1:
            raise DreamwireError(
                f"transition: give one of seconds, frames or beats (seconds={seconds}, frames={frames}, beats={beats})"
            )
        if beats is not None:
            if not _is_number(beats) or not (math.isfinite(beats) and 0.0 <= beats <= MAX_BEATS):
                raise DreamwireError(f"transition beats {beats!r} is not a number in [0, {MAX_BEATS}]")
            object.__setattr__(self, "beats", float(beats))
        if seconds is not None:
            if not _is_number(seconds) or not (math.isfinite(seconds) and 0.0 <= seconds <= MAX_SECONDS):
                raise DreamwireError(f"transition seconds {seconds!r} is not a number in [0, {MAX_SECONDS:g}]")
            object.__setattr__(self, "seconds", float(seconds))
        if frames is not None:
            whole = isinstance(frames, numbers.Integral) or (isinstance(frames, float) and frames.is_integer())
            if isinstance(frames, bool) or not whole or not 0 <= frames <= MAX_FRAMES:
                raise DreamwireError(f"transition frames {frames!r} is not a whole number in [0, {MAX_FRAMES}]")
            object.__setattr__(self, "frames", int(frames))

    @property
    def is_cut(self) -> bool:
        return not self.seconds and not self.frames and not self.beats


CUT = Duration()


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def lerp(start: Value, target: Value, t: float) -> Value:
    """Linear interpolation for floats and tensors."""
    return start + (target - start) * t


def ease(kind: Easing, p: float) -> float:
    """Map linear progress p in [0, 1] to eased progress; 0 -> 0 and 1 -> 1 exactly."""
    if kind == "smoothstep":
        return p * p * (3.0 - 2.0 * p)
    return p


class Transition:
    """One value moving from `start` to `target` over `seconds`, `frames` or `beats` (exactly one, checked by
    Duration; 0 = cut).

    The clock starts at the anchor (start_s / start_frame / start_beat, where the value equals `start`); without one
    it starts at the first value_at() call, which then returns `start`. value_at() returns `start` itself at progress
    0 and `target` itself (not an interpolation) from progress 1 on, after which `done` is True.
    """

    __slots__ = (
        "_beats",
        "_ease",
        "_frames",
        "_interp",
        "_progress",
        "_seconds",
        "_t0",
        "current",
        "done",
        "start",
        "target",
    )

    def __init__(
        self,
        start: Value,
        target: Value,
        *,
        seconds: float | None = None,
        frames: int | None = None,
        ease: Easing = "linear",
        interp: Interp = lerp,
        start_s: float | None = None,
        start_frame: int | None = None,
        beats: float | None = None,
        start_beat: float | None = None,
    ) -> None:
        if seconds is None and frames is None and beats is None:
            raise DreamwireError(f"transition: give seconds, frames or beats, got seconds={seconds}, frames={frames}")
        duration = Duration(seconds, frames, beats)
        seconds, frames, beats = duration.seconds, duration.frames, duration.beats
        if ease not in _EASINGS:
            raise DreamwireError(f"transition ease must be one of {_EASINGS}, got {ease!r}")
        self.start = start
        self.target = target
        self._seconds = seconds
        self._frames = frames
        self._beats = beats
        self._ease: Easing = ease
        self._interp = interp
        # Anchor in the unit that drives progress: seconds, frame number or beat; None until known.
        anchor = start_s if seconds is not None else start_frame if frames is not None else start_beat
        self._t0: float | None = None if anchor is None else float(anchor)
        self.current: Value = start  # the value last returned by value_at() (start before the first call)
        self._progress = 0.0  # of `current`, in [0, 1]
        self.done = False

    def value_at(self, now_s: float, frame: int, beat: float = 0.0) -> Value:
        """The value at time now_s (seconds, any monotonic clock) / output frame number `frame` / `beat` (the beat
        clock's)."""
        if self.done:
            return self.target
        if self._seconds is not None:
            now, duration = now_s, self._seconds
        elif self._frames is not None:
            now, duration = float(frame), float(self._frames)
        else:
            now, duration = beat, float(self._beats or 0.0)
            if self._t0 is not None and now < self._t0 + self._progress * duration:
                self._t0 = now - self._progress * duration  # the beat jumped back (MIDI start): go on from here
        if self._t0 is None:
            self._t0 = now
        p = 1.0 if duration == 0 else min(max((now - self._t0) / duration, 0.0), 1.0)
        if p >= 1.0:
            self.done = True
            self.current = self.target
        elif p > 0.0:
            self.current = self._interp(self.start, self.target, ease(self._ease, p))
        self._progress = p
        return self.current


class TransitionSet:
    """Active transitions keyed by parameter name; owned by the engine thread (not thread-safe)."""

    __slots__ = ("_active", "_last_beat", "_last_frame", "_last_s")

    def __init__(self) -> None:
        self._active: dict[str, Transition] = {}
        # time / frame / beat of the last advance(): where current values were applied
        self._last_s: float | None = None
        self._last_frame: int | None = None
        self._last_beat: float | None = None

    def start(
        self,
        name: str,
        start: Value,
        target: Value,
        seconds: float | None = None,
        frames: int | None = None,
        ease: Easing = "linear",
        interp: Interp = lerp,
        beats: float | None = None,
    ) -> None:
        """Begin moving `name` to `target`.

        If `name` is mid-transition, `start` is ignored and the move begins from its current interpolated value
        (the one last applied), so a retarget never jumps. The clock starts at the last advance() (when the value
        last applied was `start`), so the very next frame already moves; before any advance() it starts at the next.
        """
        running = self._active.get(name)
        if running is not None:
            start = running.current
        self._active[name] = Transition(
            start,
            target,
            seconds=seconds,
            frames=frames,
            ease=ease,
            interp=interp,
            start_s=self._last_s,
            start_frame=self._last_frame,
            beats=beats,
            start_beat=self._last_beat,
        )

    def advance(self, now_s: float, frame: int, beat: float = 0.0) -> Mapping[str, Value]:
        """Values to apply this frame, {name: value}, for every active transition; finished ones (which return
        exactly their target on their last frame) are dropped afterwards. Read-only, shared and empty when idle."""
        self._last_s = now_s
        self._last_frame = frame
        self._last_beat = beat
        if not self._active:
            return _NOTHING
        values = {name: tr.value_at(now_s, frame, beat) for name, tr in self._active.items()}
        if any(tr.done for tr in self._active.values()):
            self._active = {name: tr for name, tr in self._active.items() if not tr.done}
        return values

    def target_of(self, name: str) -> Value | None:
        """Where `name` is moving to; None when it is not moving."""
        running = self._active.get(name)
        return None if running is None else running.target

    def finish(self) -> dict[str, Value]:
        """End every transition now: {name: target} for the caller to apply (a rebuild or a reset is a cut)."""
        targets = {name: tr.target for name, tr in self._active.items()}
        self._active.clear()
        return targets

    def cancel(self, name: str) -> None:
        """Stop a transition where it is (no value is applied for it)."""
        self._active.pop(name, None)

    def clear(self) -> None:
        self._active.clear()

    def __contains__(self, name: object) -> bool:
        return name in self._active

    def __len__(self) -> int:
        return len(self._active)
