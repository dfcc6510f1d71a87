"""The engine's tempo: the beat clock (engine/live/beat_clock.py), the changes held for their beat (quantiser.py)
and the LFOs (modulators.py), with the `tempo.*` settings in effect.

Senders (any thread) ask it when a change is due (`at_beat`) and how long a beat-length transition lasts
(`duration`); the engine thread applies `tempo.*` changes (`apply`), releases quantised changes and runs the LFOs
at every frame boundary. Tempo sources (Link, MIDI clock, OSC) move the clock directly: they are not requests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from engine.config.schema import TempoConfig
from engine.core.errors import DreamwireError
from engine.live.beat_clock import BeatClock, TapTempo, quantize_beats
from engine.live.modulators import Modulators
from engine.live.quantiser import Quantiser
from engine.live.transitions import MAX_SECONDS, Duration


class Tempo:
    def __init__(self, config: TempoConfig, now: Callable[[], float] = time.perf_counter) -> None:
        self.config = config.model_copy()  # in effect (the engine thread updates it)
        self.clock = BeatClock(config.bpm, config.quantum, now)
        self.clock.latency_s = config.latency_ms / 1000.0
        self.quantiser = Quantiser(self.clock)
        self.modulators = Modulators(self.clock)
        self.tap_tempo = TapTempo()

    # ---- senders (any thread) -------------------------------------------------------------------------------

    def at_beat(self, path: str, quantize: str | None) -> float | None:
        """The beat a change is for: `quantize` or the default (tempo.quantize); None: the next frame. A tempo.*
        change is never held (or a quantize setting could not be turned off)."""
        if path.startswith("tempo."):
            if quantize not in (None, "none"):
                raise DreamwireError(f"{path}: tempo settings apply at once, not quantised ({quantize!r})")
            return None
        return self.clock.next_boundary(self.config.quantize if quantize is None else quantize)

    def duration(
        self, seconds: float | None, frames: int | None, beats: float | None = None, bars: float | None = None
    ) -> Duration:
        """A transition's length; bars become beats at the quantum now. A length in beats runs on the beat clock:
        a tempo change while it runs moves its end with the beat (its length in seconds at the tempo now is
        checked against MAX_SECONDS)."""
        given = [name for name, value in (("beats", beats), ("bars", bars)) if value is not None]
        if not given:
            return Duration(seconds, frames)
        if len(given) > 1 or seconds is not None or frames is not None:
            raise DreamwireError(
                f"transition: give one of seconds, frames, beats or bars (seconds={seconds}, frames={frames}, "
                f"beats={beats}, bars={bars})"
            )
        length = beats if beats is not None else bars
        in_beats = float(length) * (1 if beats is not None else self.clock.quantum)  # type: ignore[arg-type]
        if isinstance(length, bool) or not isinstance(length, int | float) or not 0 <= in_beats:
            raise DreamwireError(f"transition {given[0]} {length!r} is not a number ≥ 0")
        seconds = self.clock.seconds(in_beats)
        if seconds > MAX_SECONDS:
            raise DreamwireError(f"transition {given[0]} {length!r} lasts {seconds:.0f} s, over {MAX_SECONDS:g} s")
        return Duration(beats=in_beats)

    def tap(self) -> float | None:
        """A tap (now): the beat lands on it; the tempo from the taps so far, None until the second."""
        now = self.clock.now()
        self.clock.follow(beat=round(self.clock.beat_at(now)), at=now)
        return self.tap_tempo.tap(now)

    # ---- the engine thread ----------------------------------------------------------------------------------

    def apply(self, path: str, value: Any) -> None:
        """A tempo.* change now in effect."""
        name = path.split(".")[1]
        setattr(self.config, name, value)
        if name == "bpm":
            self.clock.set_bpm(value)
        elif name == "quantum":
            self.clock.quantum = value
        elif name == "latency_ms":
            self.clock.latency_s = value / 1000.0
        quantize_beats(self.config.quantize, self.clock.quantum)  # a known setting (the schema checked it)

    def live_value(self, path: str) -> Any:
        """A tempo.* value as the clock has it now, where a source moves it past the last value set (tempo.bpm:
        Link's session, MIDI clock, taps); None for any other path (its value in effect is the preset's)."""
        if path == "tempo.bpm":
            return round(self.clock.bpm, 3)  # the clock's is a mean of pulse intervals: no false precision
        return None

    def status(self) -> dict[str, Any]:
        clock = self.clock
        return {
            "bpm": clock.bpm,
            "beat": clock.beat_at(),
            "peers": clock.peers,
            "quantum": clock.quantum,
            "tempo_source": self.config.source,
            "quantised_held": len(self.quantiser),
            "modulators": len(self.modulators),
        }
