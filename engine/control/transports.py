"""Every controller of a run, started and closed as one: the control surface, OSC (osc.enabled), MIDI (midi.input)
and the tempo source (tempo.source: link or midi_clock; internal and osc need no thread of their own).

`check_available(preset)` runs before the model loads: a configured MIDI or Link whose library (or ALSA's
sequencer) is missing is one DreamwireError line there, and `dreamwire run` exits 2. Nothing is imported for
what is not configured.
"""

from __future__ import annotations

import logging
from typing import Any

from engine.config.schema import Preset
from engine.control.surface import ControlSurface
from engine.core.errors import DreamwireError
from engine.live.loop import LiveEngine

log = logging.getLogger(__name__)


def midi_wanted(preset: Preset) -> bool:
    return bool(preset.midi.input) or preset.tempo.source == "midi_clock"


def check_available(preset: Preset) -> None:
    """One line naming what a configured MIDI or Link needs and lacks."""
    if preset.tempo.source == "midi_clock" and not preset.midi.input:
        raise DreamwireError("tempo.source midi_clock needs midi.input: the port the clock comes from")
    if midi_wanted(preset):
        from engine.control.midi import midi_backend

        midi_backend()
    if preset.tempo.source == "link":
        from engine.control.link import link_factory

        link_factory()


class Controls:
    def __init__(self, surface: ControlSurface) -> None:
        self.surface = surface
        self.parts: list[Any] = []  # each with close(), closed in reverse

    @classmethod
    def start(cls, engine: LiveEngine, preset: Preset) -> Controls:
        """Start what the preset configures; a part that fails to start closes the ones before it."""
        controls = cls(ControlSurface.of(engine, preset.osc))  # the engine's one surface
        try:
            controls._start(engine, preset)
        except BaseException:
            controls.close()
            raise
        return controls

    def _start(self, engine: LiveEngine, preset: Preset) -> None:
        if preset.osc.enabled:
            from engine.control.osc import OscTransport

            self.parts.append(OscTransport.start(self.surface))
        if midi_wanted(preset):
            from engine.control.midi import MidiTransport
            from engine.control.midi_clock import MidiClock

            clock = MidiClock(engine.tempo.clock) if preset.tempo.source == "midi_clock" else None
            self.parts.append(MidiTransport(self.surface, preset.midi, midi_clock=clock).start())
        if preset.tempo.source == "link":
            from engine.control.link import LinkSource

            self.parts.append(LinkSource(engine.tempo.clock).start())

    def close(self) -> None:
        """Safe to call twice."""
        for part in reversed(self.parts):
            part.close()
        self.parts.clear()
        self.surface.close()
