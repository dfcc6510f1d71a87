"""The beat clock: where the beat is at any moment, shared by the engine thread (quantised changes, LFOs,
beat-length transitions) and the tempo sources (engine/control/link.py, midi_clock.py, the OSC commands).

The clock is a line through one anchor: `beat = anchor_beat + (t - anchor_time) · bpm / 60`, with t in seconds of
`now()` (time.perf_counter by default; tests pass a clock they move by hand). A source that knows better (Link's
session, MIDI clock pulses, TouchDesigner's beat) moves the anchor; between its updates the line runs on. The
anchor is one tuple swapped whole, so readers on any thread never take a lock.

Bars are counted from beat 0 in `quantum` beats (Link's quantum): beat 8 with quantum 4 is the start of bar 3.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import get_args

from engine.config.schema import Quantize
from engine.core.errors import DreamwireError

QUANTIZE: tuple[str, ...] = get_args(Quantize)
MIN_BPM, MAX_BPM = 20.0, 999.0  # the schema's tempo.bpm range

BpmListener = Callable[[float], None]


def quantize_beats(quantize: str, quantum: int) -> float:
    """The grid of a quantize setting, in beats (0: none)."""
    units = {"none": 0.0, "beat": 1.0, "bar": float(quantum), "2bars": 2.0 * quantum, "4bars": 4.0 * quantum}
    if quantize not in units:
        raise DreamwireError(f"quantize {quantize!r} is unknown (allowed: {', '.join(QUANTIZE)})")
    return units[quantize]


def check_bpm(bpm: float) -> float:
    if isinstance(bpm, bool) or not isinstance(bpm, int | float) or not MIN_BPM <= bpm <= MAX_BPM:
        raise DreamwireError(f"bpm {bpm!r} is not a number in [{MIN_BPM:g}, {MAX_BPM:g}]")
    return float(bpm)


class BeatClock:
    """The tempo in effect; thread-safe (see the module docstring)."""

    def __init__(self, bpm: float = 120.0, quantum: int = 4, now: Callable[[], float] = time.perf_counter) -> None:
        self.now = now
        self._anchor = (now(), 0.0, check_bpm(bpm))  # (time s, beat, bpm)
        self.quantum = quantum
        self.latency_s = 0.0  # lookahead of quantised changes (tempo.latency_ms)
        self.peers = 0  # Link peers (0 for the other sources)
        self.playing = True  # MIDI clock's stop holds the beat until start or continue
        self._lock = threading.Lock()  # writers only
        self._listeners: tuple[BpmListener, ...] = ()

    # ---- reading (any thread, no lock) ------------------------------------------------------------------------

    @property
    def bpm(self) -> float:
        return self._anchor[2]

    def beat_at(self, t: float | None = None) -> float:
        """The beat at time t (default: now); a stopped clock stays on its beat."""
        anchor_time, anchor_beat, bpm = self._anchor
        if not self.playing:
            return anchor_beat
        return anchor_beat + ((self.now() if t is None else t) - anchor_time) * bpm / 60.0

    def time_of(self, beat: float) -> float:
        """When the clock reaches `beat` at the current tempo (time of now())."""
        anchor_time, anchor_beat, bpm = self._anchor
        return anchor_time + (beat - anchor_beat) * 60.0 / bpm

    def next_boundary(self, quantize: str) -> float | None:
        """The first grid line (beat, bar, 2 or 4 bars) that a change sent now can still make, lookahead included:
        strictly after the beat at now + latency. None for "none"."""
        grid = quantize_beats(quantize, self.quantum)
        if grid == 0.0:
            return None
        beat = self.beat_at(self.now() + self.latency_s)
        return (math.floor(beat / grid + 1e-9) + 1.0) * grid

    def due(self, beat: float) -> bool:
        """True once the lookahead has reached `beat`: now ≥ the beat's time − latency."""
        return self.beat_at(self.now() + self.latency_s) >= beat - 1e-9

    def seconds(self, beats: float) -> float:
        """`beats` at the current tempo, in seconds."""
        return beats * 60.0 / self.bpm

    # ---- writing -------------------------------------------------------------------------------------------

    def follow(self, bpm: float | None = None, beat: float | None = None, at: float | None = None) -> None:
        """A source's word (Link, MIDI clock, /tempo/beat): the tempo and/or the beat at time `at` (default: now).
        Listeners are not told: the tempo came from them, or from what they follow."""
        with self._lock:
            t = self.now() if at is None else at
            current = self.beat_at(t)
            self._anchor = (t, current if beat is None else float(beat), self.bpm if bpm is None else check_bpm(bpm))

    def set_bpm(self, bpm: float) -> None:
        """A tempo asked for here (tempo.bpm from OSC, MIDI, Python, tap): the beat runs on without a jump, and the
        listeners (a leading Link session) are told."""
        self.follow(bpm=bpm)
        for listener in self._listeners:
            listener(self.bpm)

    def add_bpm_listener(self, listener: BpmListener) -> None:
        with self._lock:
            self._listeners = (*self._listeners, listener)

    def remove_bpm_listener(self, listener: BpmListener) -> None:
        with self._lock:
            self._listeners = tuple(item for item in self._listeners if item is not listener)

    def stop(self) -> None:
        """Hold the beat where it is (MIDI stop)."""
        with self._lock:
            t = self.now()
            self._anchor = (t, self.beat_at(t), self.bpm)
            self.playing = False

    def start(self, beat: float | None = 0.0) -> None:
        """Run again: from `beat` (MIDI start: 0) or, with None, from where it stopped (MIDI continue)."""
        with self._lock:
            _, held, bpm = self._anchor
            self._anchor = (self.now(), held if beat is None else float(beat), bpm)
            self.playing = True


class TapTempo:
    """Tap tempo: the mean interval of the last taps, a new series after a pause of `reset_s`."""

    def __init__(self, max_taps: int = 8, reset_s: float = 2.0) -> None:
        self.max_taps, self.reset_s = max_taps, reset_s
        self._taps: list[float] = []
        self._lock = threading.Lock()

    def tap(self, t: float) -> float | None:
        """The tempo after a tap at time t (s); None until the second tap of a series."""
        with self._lock:
            if self._taps and t - self._taps[-1] > self.reset_s:
                self._taps.clear()
            self._taps = [*self._taps[-(self.max_taps - 1) :], t]
            if len(self._taps) < 2:
                return None
            interval = (self._taps[-1] - self._taps[0]) / (len(self._taps) - 1)
        return min(max(60.0 / interval, MIN_BPM), MAX_BPM) if interval > 0 else None
