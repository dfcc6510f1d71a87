"""The handlers of the tempo, LFO and MIDI learn commands (their rows are in the command table,
engine/control/commands.py): /tempo/beat, /tempo/tap, /transition/beats, /transition/bars, /lfo, /lfo/remove,
/lfo/clear and /midi/learn. Each coerces its arguments and calls the engine's tempo (engine/live/tempo.py) or the
MIDI transport, or raises DreamwireError with one line naming the bad value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.config import paths
from engine.control.coerce import join_text, scalar
from engine.core.errors import DreamwireError
from engine.live.modulators import DERIVED, check_lfo

Surface = Any  # engine/control/commands.py's Surface protocol (that module imports this one)


def _count(args: Sequence[Any], low: int, high: int, form: str) -> None:
    if not low <= len(args) <= high:
        raise DreamwireError(f"expects {form}, got {len(args)} arguments")


def tempo_beat(surface: Surface, args: Sequence[Any]) -> None:
    """The beat now, from TouchDesigner's Beat CHOP (tempo.source: osc)."""
    _count(args, 1, 1, "f (the beat now)")
    source = surface.engine.tempo.config.source
    if source in ("link", "midi_clock"):
        raise DreamwireError(f"the beat follows tempo.source {source}; /tempo/beat is for osc or internal")
    beat = scalar("float", args[0])
    surface.engine.tempo.clock.follow(beat=beat)


def tempo_tap(surface: Surface, args: Sequence[Any]) -> None:
    """A tap: the beat lands on it; from the second tap of a series on, the tempo follows the taps."""
    if args and args[0] is not None and not scalar("bool", args[0]):
        return  # a button's release
    bpm = surface.engine.tempo.tap()
    if bpm is not None:
        surface.set_value("tempo.bpm", round(bpm, 2))


def transition_beats(surface: Surface, args: Sequence[Any]) -> None:
    _count(args, 1, 1, "f (beats)")
    surface.transition.set_beats(scalar("float", args[0]))
    surface.reply("/transition/beats", float(args[0]))


def transition_bars(surface: Surface, args: Sequence[Any]) -> None:
    _count(args, 1, 1, "f (bars)")
    surface.transition.set_bars(scalar("float", args[0]))
    surface.reply("/transition/bars", float(args[0]))


def target_path(surface: Surface, address: Any) -> str:
    """An address (`/prompt/guidance`, `/dreamwire/guidance`) or a dotted path → the registry path."""
    text = join_text([address]).strip()
    if "/" not in text:
        return text
    route = surface.router.route(text)
    if route.command is not None and route.target not in DERIVED:  # /strength drives a parameter: it can move
        raise DreamwireError(f"{text} is a command, not a parameter")
    return route.target


def lfo(surface: Surface, args: Sequence[Any]) -> None:
    """/lfo s <address> s <shape> f <rate> s <unit> f <depth> [f <phase> [i <layer>]]"""
    form = "s address, s shape, f rate, s unit (beats, bars, hz), f depth [, f phase [, i layer]]"
    _count(args, 5, 7, form)
    path = target_path(surface, args[0])
    shape, unit = join_text([args[1]]), join_text([args[3]])
    rate, depth = scalar("float", args[2]), scalar("float", args[4])
    phase = scalar("float", args[5]) if len(args) >= 6 else 0.0
    layer = scalar("int", args[6]) if len(args) == 7 else 0
    checked = check_lfo(path, shape, rate, unit, depth, phase, layer)
    if path not in DERIVED:
        paths.read(surface.engine.preset, path)  # controlnets.<i>.*: the entry exists, or one line saying so
    surface.engine.tempo.modulators.set(checked)
    surface.reply("/lfo", "/" + path.replace(".", "/"), shape, rate, unit, depth, phase, layer)


def lfo_remove(surface: Surface, args: Sequence[Any]) -> None:
    _count(args, 1, 2, "s address [, i layer]")
    path = target_path(surface, args[0])
    layer = scalar("int", args[1]) if len(args) == 2 else None
    if not surface.engine.tempo.modulators.remove(path, layer):
        raise DreamwireError(f"{path} has no LFO" + ("" if layer is None else f" on layer {layer}"))


def lfo_clear(surface: Surface, args: Sequence[Any]) -> None:
    surface.engine.tempo.modulators.clear()


def midi_learn(surface: Surface, args: Sequence[Any]) -> None:
    """The next MIDI control that moves is mapped to the address (engine/control/midi.py)."""
    _count(args, 1, 1, "s address")
    midi = getattr(surface, "midi", None)
    if midi is None:
        raise DreamwireError("MIDI is not configured (set midi.input in the preset)")
    address = join_text([args[0]]).strip()
    surface.router.route(address)  # a known address, or the refusal now rather than when a fader moves
    midi.learn(address)
