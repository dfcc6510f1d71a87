"""MIDI clock, a tempo source (`tempo.source: midi_clock`): 24 pulses per quarter note from the MIDI input
(engine/control/midi.py hands them here) → the beat clock's tempo and beat.

The tempo is the mean pulse interval over the last beat (24 pulses), so the jitter of one pulse (USB, the OS's
scheduling: a millisecond or two, about 5 % of a pulse at 120 bpm) moves it by a fraction of that. Start puts
the beat at 0, continue runs on from where stop held it; pulses while stopped keep the tempo current only.
"""

from __future__ import annotations

import logging
from collections import deque

from engine.live.beat_clock import MAX_BPM, MIN_BPM, BeatClock

log = logging.getLogger(__name__)

PPQN = 24  # MIDI clock pulses per quarter note (one beat)
GAP_S = 1.0  # a pause longer than this between pulses starts the average afresh (the master stopped or changed)


class MidiClock:
    def __init__(self, clock: BeatClock) -> None:
        self.clock = clock
        self._times: deque[float] = deque(maxlen=PPQN + 1)  # the last beat's pulse times (s)
        self.pulses = 0  # since start: the beat is pulses / 24

    @property
    def bpm(self) -> float | None:
        """The smoothed tempo; None until two pulses have come."""
        times = self._times
        if len(times) < 2:
            return None
        interval = (times[-1] - times[0]) / (len(times) - 1)
        return 60.0 / (interval * PPQN) if interval > 0 else None

    def pulse(self, t: float) -> None:
        """One clock pulse (0xF8) received at time t (the clock's time base)."""
        if self._times and t - self._times[-1] > GAP_S:
            self._times.clear()
        self._times.append(t)
        bpm = self.bpm
        if bpm is not None:
            bpm = min(max(bpm, MIN_BPM), MAX_BPM)
        if self.clock.playing:
            self.pulses += 1
            self.clock.follow(bpm=bpm, beat=self.pulses / PPQN, at=t)
        elif bpm is not None:
            self.clock.follow(bpm=bpm, at=t)

    def start(self) -> None:
        """0xFA: from the top (beat 0)."""
        self.pulses = 0
        self.clock.start(0.0)
        log.info("MIDI clock: start")

    def stop(self) -> None:
        """0xFC: the beat holds."""
        self.clock.stop()
        log.info("MIDI clock: stop")

    def continue_(self) -> None:
        """0xFB: on from where it stopped."""
        self.clock.start(None)
        log.info("MIDI clock: continue")
