"""LFOs on live numeric parameters: sine, triangle, saw, square and random-hold, at a rate in beats or bars (the
period, synced to the beat clock) or in Hz, with a depth in the parameter's own units.

    value = clamp(base + depth · wave(phase), the registry's min, max)

`base` is the parameter's value in effect (a change to it moves the LFO's centre); the result never leaves the
parameter's range. Modulators are set and removed from any thread (a whole new tuple swapped in, no queue), and
applied by the engine thread once per frame boundary, through the same handler as a change of the parameter
(engine/live/changes.py Changes.modulate): they are not requests, so they send no events and never fill the
control queue. The value in effect (`engine.preset`) stays the base.

Which numbers can be moved is read off the registry (see REFUSED), so a section added later gets LFOs with no
change here. `strength` (img2img strength, engine/live/strength.py) is a derived number: it drives
stream.t_index_list, whose change rebuilds the schedule's tables (small tensors, in place: no pipeline rebuild),
so it is set only when the list changes and at most every SCHEDULE_INTERVAL_S.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal, get_args

from engine.config import paths
from engine.config.registry import ParamSpec, registry
from engine.core.errors import DreamwireError
from engine.live.beat_clock import BeatClock
from engine.live.strength import strength_to_t_index_list, t_index_list_to_strength

log = logging.getLogger(__name__)

Shape = Literal["sine", "triangle", "saw", "square", "random"]
Unit = Literal["beats", "bars", "hz"]
SHAPES: tuple[str, ...] = get_args(Shape)
UNITS: tuple[str, ...] = get_args(Unit)
# Rate ranges: a period of 1/4 beat to 16 bars, or a frequency in Hz.
RATE_RANGES: dict[str, tuple[float, float]] = {"beats": (0.25, 64.0), "bars": (0.0625, 16.0), "hz": (0.001, 30.0)}
MAX_MODULATORS = 32
LAYERS = 8  # LFOs per parameter (layer 0-7), their swings added before the clamp


def wave(shape: str, phase: float, cycle: int = 0) -> float:
    """The shape at `phase` in [0, 1) of cycle number `cycle`, in [-1, 1]. random holds one value per cycle."""
    if shape == "sine":
        return math.sin(2.0 * math.pi * phase)
    if shape == "triangle":
        return 1.0 - 4.0 * abs(phase - 0.5)  # -1 at 0, +1 at 1/2
    if shape == "saw":
        return 2.0 * phase - 1.0
    if shape == "square":
        return 1.0 if phase < 0.5 else -1.0
    return hold_random(cycle)


def hold_random(cycle: int) -> float:
    """A repeatable pseudo-random value in [-1, 1] for a cycle number (a hash, no generator state)."""
    x = math.sin(cycle * 12.9898 + 78.233) * 43758.5453
    return 2.0 * (x - math.floor(x)) - 1.0


@dataclass(frozen=True)
class Lfo:
    path: str
    shape: str
    rate: float  # beats or bars: the period; hz: the frequency
    unit: str
    depth: float  # in the parameter's units: the value swings base ± depth
    phase: float = 0.0  # offset in cycles, [0, 1)
    layer: int = 0  # several LFOs on one parameter: one per layer, added up

    def cycles(self, beat: float, seconds: float, quantum: int) -> float:
        """Cycles since beat 0 (beats, bars) or since time 0 (hz)."""
        if self.unit == "hz":
            return seconds * self.rate + self.phase
        period = self.rate * (quantum if self.unit == "bars" else 1)
        return beat / period + self.phase

    def offset(self, beat: float, seconds: float, quantum: int) -> float:
        """depth · wave, before clamping."""
        cycles = self.cycles(beat, seconds, quantum)
        whole = math.floor(cycles)
        return self.depth * wave(self.shape, cycles - whole, int(whole))


def check_lfo(path: str, shape: str, rate: float, unit: str, depth: float, phase: float = 0.0, layer: int = 0) -> Lfo:
    """An Lfo, or one DreamwireError naming the bad value."""
    spec = modulatable().get(path)
    if spec is None:
        raise DreamwireError(refusal(path))
    if shape not in SHAPES:
        raise DreamwireError(f"LFO shape {shape!r} is unknown (allowed: {', '.join(SHAPES)})")
    if unit not in UNITS:
        raise DreamwireError(f"LFO rate unit {unit!r} is unknown (allowed: {', '.join(UNITS)})")
    low, high = RATE_RANGES[unit]
    if not _number(rate) or not low <= rate <= high:
        raise DreamwireError(f"LFO rate {rate!r} {unit} is not in [{low:g}, {high:g}]")
    span = (spec.maximum or 0.0) - (spec.minimum or 0.0)
    if not _number(depth) or not 0.0 <= depth <= span:
        raise DreamwireError(f"LFO depth {depth!r} for {path} is not in [0, {span:g}] (the parameter's range)")
    if not _number(phase) or not 0.0 <= phase < 1.0:
        raise DreamwireError(f"LFO phase {phase!r} is not in [0, 1)")
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < LAYERS:
        raise DreamwireError(f"LFO layer {layer!r} is not a whole number in [0, {LAYERS - 1}]")
    return Lfo(path, shape, float(rate), unit, float(depth), float(phase), layer)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# Which live numbers an LFO can move is read off the registry (engine/config/registry.py): every live int or float
# with a range, whatever section it is in (controlnets.<i>.scale, and any number a later section adds), applied
# through the same handler as a change of it (engine/live/changes.py Changes.modulate). Refused, by `apply` name:
REFUSED: dict[str, str] = {
    "schedule": "it moves the schedule that t_index_list indexes and could push it out of range (an LFO on "
    "`strength` moves the schedule within range)",
    "tempo": "it is the beat clock that the LFOs follow",
    "feature_bank": "its enabled and max_frames make the rings anew (a re-capture, a rebuild under TensorRT); "
    "set the bank's numbers by value",
}
SCHEDULE_INTERVAL_S = 0.05  # strength: at most one schedule change (a table rebuild) per 50 ms, 20 a second


@dataclass(frozen=True)
class Derived:
    """A number that is not a registry parameter but drives one: `strength` drives stream.t_index_list."""

    spec: ParamSpec
    target: str  # the registry path it drives
    base: Callable[[Any], float]  # preset -> its value in effect
    drive: Callable[[Any, float], Any]  # (preset, value) -> the target's value
    interval_s: float  # the least time between two changes of the target (0: every frame)


DERIVED: dict[str, Derived] = {
    "strength": Derived(
        ParamSpec(
            "strength",
            "float",
            None,
            "img2img strength (engine/live/strength.py), through stream.t_index_list",
            live=True,
            apply="schedule",
            minimum=0.0,
            maximum=1.0,
        ),
        "stream.t_index_list",
        lambda preset: t_index_list_to_strength(preset.stream.t_index_list, preset.stream.num_inference_steps),
        lambda preset, value: strength_to_t_index_list(
            value, len(preset.stream.t_index_list), preset.stream.num_inference_steps
        ),
        SCHEDULE_INTERVAL_S,
    )
}


@cache
def modulatable() -> dict[str, ParamSpec]:
    """The live numeric parameters an LFO can move (see REFUSED), and the derived numbers (DERIVED)."""
    found = {
        path: spec
        for path, spec in registry().items()
        if spec.live
        and spec.kind in ("int", "float")
        and spec.apply not in REFUSED
        and spec.minimum is not None
        and spec.maximum is not None
    }
    return {**found, **{name: derived.spec for name, derived in DERIVED.items()}}


def refusal(path: str) -> str:
    """Why an LFO cannot move `path`: one line naming it."""
    spec = registry().get(path)
    if spec is None:
        shown = sorted({modulatable()[name].item or name for name in modulatable()})
        return f"LFO on {path!r}: not a live numeric parameter (these can: {', '.join(shown)})"
    if spec.kind not in ("int", "float") or spec.minimum is None or spec.maximum is None:
        return f"LFO on {path}: not a live numeric parameter ({spec.allowed()})"
    if not spec.live:
        return f"LFO on {path}: it changes only with a rebuild (or at start), never per frame"
    return f"LFO on {path}: {REFUSED.get(spec.apply, 'not modulatable')}"


def modulated(lfos: Lfo | Sequence[Lfo], base: float, beat: float, seconds: float, quantum: int) -> float:
    """A parameter's value under its LFOs (one, or the layers of one parameter, their swings added): clamped to the
    parameter's range, rounded for an int parameter."""
    layered = (lfos,) if isinstance(lfos, Lfo) else lfos
    spec = modulatable()[layered[0].path]
    value = base
    for lfo in layered:
        value += lfo.offset(beat, seconds, quantum)
    value = min(max(value, spec.minimum or 0.0), spec.maximum or 0.0)
    return round(value) if spec.kind == "int" else value


class Modulators:
    """The running LFOs, by parameter (up to LAYERS each); see the module docstring."""

    def __init__(self, clock: BeatClock) -> None:
        self.clock = clock
        # path -> its LFOs by layer; replaced whole on every change: the engine thread reads it without a lock
        self._lfos: dict[str, tuple[Lfo, ...]] = {}
        self._removed: tuple[str, ...] = ()  # parameters back to their base on the next frame
        # engine thread: ((value set, base), when) of an int parameter or strength, which are set only on change
        self._last: dict[str, tuple[tuple[Any, float], float]] = {}
        self._lock = threading.Lock()

    def set(self, lfo: Lfo) -> None:
        """Start an LFO, or replace the one on the same parameter and layer."""
        with self._lock:
            others = tuple(item for item in self._lfos.get(lfo.path, ()) if item.layer != lfo.layer)
            if len(others) == len(self._lfos.get(lfo.path, ())) and len(self) >= MAX_MODULATORS:
                raise DreamwireError(f"LFO on {lfo.path}: at most {MAX_MODULATORS} LFOs run at once")
            layered = tuple(sorted((*others, lfo), key=lambda item: item.layer))
            self._lfos = {**self._lfos, lfo.path: layered}

    def remove(self, path: str, layer: int | None = None) -> bool:
        """Remove a parameter's LFOs (or one layer's); False when there was none."""
        with self._lock:
            running = self._lfos.get(path, ())
            left = () if layer is None else tuple(item for item in running if item.layer != layer)
            if len(left) == len(running):
                return False
            lfos = {key: value for key, value in self._lfos.items() if key != path}
            if left:
                lfos[path] = left
            else:
                self._removed = (*self._removed, path)
            self._lfos = lfos
            return True

    def clear(self) -> None:
        with self._lock:
            self._removed = (*self._removed, *self._lfos)
            self._lfos = {}

    @property
    def running(self) -> dict[str, tuple[Lfo, ...]]:
        return self._lfos

    def __len__(self) -> int:
        return sum(len(layered) for layered in self._lfos.values())

    def apply(self, preset: Any, modulate: Modulate) -> None:
        """Engine thread, once per frame boundary: every LFO's value into the pipeline through `modulate`
        (engine/live/changes.py Changes.modulate), a removed one's value in effect back. An LFO whose parameter
        fails (a rebuild took its ControlNet away) is removed, with one warning."""
        lfos, removed = self._lfos, self._removed
        values: list[tuple[str, Any]] = []
        owner: dict[str, str] = {}  # the path set -> the LFO's path (strength sets stream.t_index_list)
        if removed:
            with self._lock:
                removed, self._removed = self._removed, ()
            for path in removed:
                if path not in lfos:
                    self._last.pop(path, None)
                    target = DERIVED[path].target if path in DERIVED else path
                    values.append((target, paths.read(preset, target)))
                    owner[target] = path
        if lfos:
            seconds = self.clock.now()
            beat, quantum = self.clock.beat_at(seconds), self.clock.quantum
            for path, layered in lfos.items():
                derived = DERIVED.get(path)
                base = derived.base(preset) if derived else float(paths.read(preset, path))
                value = modulated(layered, base, beat, seconds, quantum)
                target, put = (derived.target, derived.drive(preset, value)) if derived else (path, value)
                last = self._last.get(path)
                if last is not None and last[0] == (put, base):
                    continue  # unchanged: an int (a seed set again draws its noise again) or strength's list
                if derived and last is not None and seconds - last[1] < derived.interval_s:
                    continue  # strength: a schedule change rebuilds the tables, at most every interval_s
                if spec_kind(path) == "int" or derived:
                    self._last[path] = ((put, base), seconds)
                values.append((target, put))
                owner[target] = path
        if not values:
            return
        for target, why in modulate(values):
            path = owner[target]
            self._last.pop(path, None)
            if path in lfos:
                log.warning("LFO on %s removed: %s", path, why)
                self.remove(path)
            else:  # its value in effect back: the parameter is gone, or a change of it is on its way
                log.debug("LFO on %s: the value in effect not put back: %s", path, why)


def spec_kind(path: str) -> str:
    return modulatable()[path].kind


# Changes.modulate: (path, value) pairs in, (path, why) for each that failed out.
Modulate = Callable[[Sequence[tuple[str, Any]]], list[tuple[str, str]]]
