"""MIDI, one transport over the control surface: controllers (faders, knobs, pads: CC, notes, pitch bend) mapped
to any address (engine/control/midi_map.py), MIDI learn, LED feedback, and MIDI clock for the beat clock
(engine/control/midi_clock.py).

Each mapped message becomes one `surface.handle(address, args, ("midi", channel))`, exactly as if the address had
come over OSC: routing, coercion, the network rule and validation are the surface's. What goes back (echoes of
applied changes) arrives through the outlet this transport registers: it ends a soft takeover when someone else
moved the value, and sends the value back as a CC (or note) where the mapping says `feedback: true`.

Ports are found by a part of their name (`midi.input`, `midi.output`). A port that is not there is waited for:
a supervised thread looks for it every second, with one warning while it is missing, and opens it when it
appears; a port unplugged mid-show is the same. The engine renders on meanwhile. mido and python-rtmidi are
imported only here and only when MIDI is configured; without them (or without ALSA's sequencer on Linux),
`midi_backend()` is one DreamwireError line, and `dreamwire run` exits 2.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from engine.config.registry import registry
from engine.config.schema import MidiConfig
from engine.control.midi_clock import MidiClock
from engine.control.midi_map import Mapping, MidiMap, curve, load_map, save_map, uncurve
from engine.control.surface import ControlSurface
from engine.core.errors import DreamwireError
from engine.core.supervisor import SupervisedThread, spawn

log = logging.getLogger(__name__)

PICKUP = 3 / 127  # soft takeover: a control this close to the value's position picks it up
POLL_S = 1.0  # how often a missing port is looked for
DEFAULT_MAP = "dreamwire-midi.yaml"  # where MIDI learn saves when neither --midi-map nor midi.map names a file
ALSA_HINT = (
    "MIDI needs mido and python-rtmidi (pip install 'dreamwire[midi]'); on Linux rtmidi needs ALSA "
    "(libasound2, and the snd-seq kernel module for /dev/snd/seq)"
)


class Port(Protocol):
    def close(self) -> None: ...


class OutPort(Port, Protocol):
    def send(self, message: Any) -> None: ...


class MidiBackend(Protocol):
    """What the transport needs of a MIDI library: port names, and ports opened by name."""

    def input_names(self) -> list[str]: ...
    def output_names(self) -> list[str]: ...
    def open_input(self, name: str, callback: Callable[[Any], None]) -> Port: ...
    def open_output(self, name: str) -> OutPort: ...
    def message(self, kind: str, **fields: Any) -> Any: ...


class MidoBackend:
    """mido over python-rtmidi (ALSA on Linux, CoreMIDI on macOS, Windows MultiMedia on Windows)."""

    def __init__(self) -> None:
        try:
            import mido

            self._api = mido.Backend("mido.backends.rtmidi", load=True)
            self._message = mido.Message
            self._api.get_input_names()  # rtmidi opens the system's MIDI client here: no ALSA sequencer fails now
        except Exception as error:  # ImportError, or rtmidi's SystemError without a sequencer
            raise DreamwireError(f"{ALSA_HINT}: {str(error).splitlines()[0] if str(error) else error!r}") from None

    def input_names(self) -> list[str]:
        return list(self._api.get_input_names())

    def output_names(self) -> list[str]:
        return list(self._api.get_output_names())

    def open_input(self, name: str, callback: Callable[[Any], None]) -> Port:
        return self._api.open_input(name, callback=callback)

    def open_output(self, name: str) -> OutPort:
        return self._api.open_output(name)

    def message(self, kind: str, **fields: Any) -> Any:
        return self._message(kind, **fields)


def midi_backend() -> MidoBackend:
    """The MIDI library; one DreamwireError line naming what is missing."""
    return MidoBackend()


def find_port(names: Sequence[str], wanted: str) -> str | None:
    """The port whose name is `wanted` or contains it (case-insensitive); the first of several."""
    for name in names:
        if name == wanted:
            return name
    return next((name for name in names if wanted.lower() in name.lower()), None)


@dataclass
class _State:
    """A mapping's live state (the rtmidi callback thread's)."""

    path: str | None  # the registry parameter, or None for a command
    picked: bool = False  # soft takeover: the control has met the value
    last_x: float | None = None  # the control's last position in [0, 1]
    sent: deque[Any] = field(default_factory=lambda: deque(maxlen=32))  # values sent lately (their echoes are ours)
    index: int = -1  # cycle: the value sent last


class MidiTransport:
    def __init__(
        self,
        surface: ControlSurface,
        config: MidiConfig,
        map_path: str = "",
        backend: MidiBackend | None = None,
        midi_clock: MidiClock | None = None,
        poll_s: float = POLL_S,
    ) -> None:
        self.surface, self.config = surface, config
        self.map_path = Path(map_path or config.map or DEFAULT_MAP)
        self.map = load_map(self.map_path) if (map_path or config.map) else MidiMap()
        self.backend = backend
        self.midi_clock = midi_clock
        self.poll_s = poll_s
        # The map and the states: the callback thread, learn() and the outlet (re-entered: a reply is echoed).
        self._lock = threading.RLock()
        self._states: dict[tuple[Any, ...], _State] = {}  # by control and address
        self._learning: str | None = None
        self._input: Port | None = None
        self._input_name: str | None = None
        self._output: OutPort | None = None
        self._output_name: str | None = None
        self._missing_warned = False
        self._thread: SupervisedThread | None = None
        self.received = 0
        for mapping in self.map.controls:
            self._check(mapping)

    # ---- lifetime ---------------------------------------------------------------------------------------

    def start(self) -> MidiTransport:
        if self.backend is None:
            self.backend = midi_backend()
        self.surface.midi = self
        self.surface.add_outlet(self._echo)
        self.surface.engine.status_sources.append(self.counters)
        self._thread = spawn("dreamwire-midi-ports", self._watch)
        return self

    def counters(self) -> dict[str, Any]:
        """For status(): the input port in use (or what is waited for) and the messages received."""
        port = self._input_name or f"waiting for {self.config.input!r}"
        return {"midi_input": port, "midi_received": self.received}

    def close(self) -> None:
        """Safe to call twice."""
        if self._thread is not None:
            self._thread.stop()
            self._thread = None
        self.surface.remove_outlet(self._echo)
        if self.counters in self.surface.engine.status_sources:
            self.surface.engine.status_sources.remove(self.counters)
        if self.surface.midi is self:
            self.surface.midi = None
        self._close_ports()

    def _close_ports(self) -> None:
        for port in (self._input, self._output):
            if port is not None:
                try:
                    port.close()
                except Exception as error:  # a port unplugged under us may fail to close: it is gone anyway
                    log.debug("closing a MIDI port failed: %s", error)
        self._input = self._output = None
        self._input_name = self._output_name = None

    def _watch(self, stop: threading.Event) -> None:
        """Open the ports when they appear, let go when they vanish; one warning per absence."""
        while not stop.is_set():
            self.poll_ports()
            stop.wait(self.poll_s)
        self._close_ports()

    def poll_ports(self) -> None:
        assert self.backend is not None
        inputs = self.backend.input_names()
        if self._input_name is not None and self._input_name not in inputs:
            log.warning("MIDI input %r was unplugged: waiting for it to come back", self._input_name)
            self._close_ports()
            self._missing_warned = True
        if self._input_name is None:
            name = find_port(inputs, self.config.input)
            if name is None:
                if not self._missing_warned:
                    shown = ", ".join(inputs) or "none"
                    log.warning("MIDI input %r not found (ports: %s): waiting for it", self.config.input, shown)
                    self._missing_warned = True
                return
            self._input = self.backend.open_input(name, self.on_message)
            self._input_name, self._missing_warned = name, False
            log.info("MIDI input: %s", name)
        if self._output is None and any(m.feedback for m in self.map.controls):
            name = find_port(self.backend.output_names(), self.config.output or self.config.input)
            if name is not None:
                self._output, self._output_name = self.backend.open_output(name), name
                log.info("MIDI output (LED feedback): %s", name)

    @property
    def connected(self) -> str | None:
        return self._input_name

    # ---- incoming -----------------------------------------------------------------------------------------

    def on_message(self, message: Any) -> None:
        """One message from the input port (rtmidi's thread, or a test); never raises."""
        try:
            self._on_message(message)
        except Exception:  # a bug here must not stop the port's callbacks
            log.exception("MIDI message %s failed", message)

    def _on_message(self, message: Any) -> None:
        self.received += 1
        kind = message.type
        if kind in ("clock", "start", "stop", "continue"):
            if self.midi_clock is not None:
                clock = self.midi_clock
                {"clock": lambda: clock.pulse(clock.clock.now()), "start": clock.start, "stop": clock.stop,
                 "continue": clock.continue_}[kind]()  # fmt: skip
            return
        if kind == "control_change":
            control, number, x, pressed = "cc", message.control, message.value / 127, message.value >= 64
        elif kind in ("note_on", "note_off"):
            pressed = kind == "note_on" and message.velocity > 0
            control, number, x = "note", message.note, message.velocity / 127 if pressed else 0.0
        elif kind == "pitchwheel":
            control, number, x, pressed = "pitchbend", None, (message.pitch + 8192) / 16383, True
        else:
            return
        channel = message.channel + 1
        with self._lock:
            learning = self._learning
            if learning is not None and (pressed or control != "note"):
                self._learning = None
                self._learned(learning, control, channel, number)
                return
            matched = [m for m in self.map.controls if m.matches(control, channel, number)]
        for mapping in matched:
            self._drive(mapping, x, pressed)

    def _state(self, mapping: Mapping) -> _State:
        key = (*mapping.key(), mapping.address)
        state = self._states.get(key)
        if state is None:
            route = self.surface.router.route(mapping.address)
            state = self._states[key] = _State(None if route.command else route.target)
        return state

    def _drive(self, mapping: Mapping, x: float, pressed: bool) -> None:
        state = self._state(mapping)
        if mapping.type == "continuous":
            self._continuous(mapping, state, x)
        elif not pressed:
            return  # toggle, trigger, cycle: on the press only
        elif mapping.type == "toggle":
            self._send(mapping, state, [int(not self._current(mapping, state))])
        elif mapping.type == "trigger":
            self._send(mapping, state, list(mapping.values))
        else:
            values = self._cycle_values(mapping, state)
            if state.index < 0 and state.path is not None and self._current(mapping, state) in values:
                state.index = values.index(self._current(mapping, state))
            state.index = (state.index + 1) % len(values)
            self._send(mapping, state, [values[state.index]])

    def _continuous(self, mapping: Mapping, state: _State, x: float) -> None:
        low, high = self._range(mapping, state)
        value = low + curve(mapping.curve, x) * (high - low)
        if state.path is not None and registry()[state.path].kind == "int":
            value = round(value)
        if mapping.takeover and not state.picked:
            current = self._current(mapping, state)
            if isinstance(current, int | float) and high != low:
                position = uncurve(mapping.curve, min(max((float(current) - low) / (high - low), 0.0), 1.0))
                crossed = state.last_x is not None and (state.last_x - position) * (x - position) <= 0
                state.last_x = x
                if abs(x - position) > PICKUP and not crossed:
                    return  # not picked up yet: the value stays where it is
            state.picked = True
        state.last_x = x
        self._send(mapping, state, [value])

    def _send(self, mapping: Mapping, state: _State, args: list[Any]) -> None:
        if args:
            state.sent.append(args[0])
        self.surface.handle(mapping.address, args, ("midi", mapping.channel or 0))

    def _range(self, mapping: Mapping, state: _State) -> tuple[float, float]:
        if mapping.range is not None:
            return mapping.range
        spec = registry()[state.path] if state.path else None
        if spec is None or spec.minimum is None or spec.maximum is None:
            raise DreamwireError(f"MIDI map: {mapping.address} has no range of its own; give `range: [low, high]`")
        return spec.minimum, spec.maximum

    def _current(self, mapping: Mapping, state: _State) -> Any:
        if state.path is not None:
            return self.surface.value(state.path)
        command = self.surface.router.route(mapping.address).command
        value = command.value(self.surface) if command is not None and command.value is not None else [0]
        return value[0] if value else 0

    def _cycle_values(self, mapping: Mapping, state: _State) -> list[Any]:
        if mapping.values:
            return mapping.values
        return list(registry()[state.path].choices) if state.path else []

    def _check(self, mapping: Mapping) -> None:
        """A mapping that can work: a known address, a range where it needs one, values for a cycle."""
        try:
            state = self._state(mapping)
            if mapping.type == "continuous":
                self._range(mapping, state)
            if mapping.type == "cycle" and not self._cycle_values(mapping, state):
                raise DreamwireError(f"a cycle needs `values` (or an enum parameter), {mapping.address} has none")
        except DreamwireError as error:
            raise DreamwireError(f"MIDI map {self.map_path}: {mapping.address}: {error}") from None

    # ---- learn ----------------------------------------------------------------------------------------------

    def learn(self, address: str) -> None:
        """The next control that moves is mapped to `address` (checked now: a known, mappable address)."""
        route = self.surface.router.route(address)
        if route.command is None and registry()[route.target].kind in ("str", "list[int]", "list[str]", "str|null"):
            raise DreamwireError(
                f"{address} takes text or a list: write a cycle mapping with its values in {self.map_path}"
            )
        with self._lock:
            self._learning = address
        log.info("MIDI learn: move a control for %s", address)

    def _learned(self, address: str, control: str, channel: int, number: int | None) -> None:
        """Under the lock: a mapping of a type that suits the address, added and saved."""
        route = self.surface.router.route(address)
        kind = registry()[route.target].kind if route.command is None else ""
        if route.command is not None:
            command = route.command
            numeric = command.osc_type in ("f", "i") and command.range is not None and command.value is not None
            mapping_type = "continuous" if numeric and control != "note" else "trigger"
            ranges = command.range() if numeric and command.range is not None else []
            span = (float(ranges[0]["MIN"]), float(ranges[0]["MAX"])) if ranges and "MIN" in ranges[0] else None
            if mapping_type == "continuous" and span is None:
                mapping_type = "trigger"
        else:
            mapping_type = {"bool": "toggle", "enum": "cycle"}.get(kind, "continuous")
            span = None
        mapping = Mapping(
            control=control,  # type: ignore[arg-type]
            channel=channel,
            number=number,
            address=address,
            type=mapping_type,  # type: ignore[arg-type]
            range=span if mapping_type == "continuous" and route.command is not None else None,
        )
        self.map.add(mapping)
        save_map(self.map, self.map_path)
        where = f"{control} {number}" if number is not None else control
        log.info("MIDI learn: %s on channel %d → %s (%s), saved to %s", where, channel, address, mapping_type,
                 self.map_path)  # fmt: skip
        self.surface.reply("/midi/learn", address, f"{where} ch {channel}", mapping_type)

    # ---- outgoing -----------------------------------------------------------------------------------------

    def _echo(self, address: str, args: list[Any]) -> None:
        """An outlet: echoes of applied changes end a pick-up someone else broke, and light the LEDs."""
        if not args:
            return
        relative = self.surface.router.relative(address)
        with self._lock:
            for mapping in self.map.controls:
                state = self._state(mapping)
                if state.path is None or "/" + state.path.replace(".", "/") != relative:
                    continue
                value = args[0]
                if not any(_same(value, sent) for sent in state.sent):
                    state.picked = False  # moved elsewhere: the control must meet it again
                if mapping.feedback and self._output is not None:
                    self._feedback(mapping, state, value)

    def _feedback(self, mapping: Mapping, state: _State, value: Any) -> None:
        assert self.backend is not None and self._output is not None
        if mapping.type == "continuous" and isinstance(value, int | float):
            low, high = self._range(mapping, state)
            x = uncurve(mapping.curve, min(max((float(value) - low) / (high - low), 0.0), 1.0)) if high != low else 0
        else:
            x = 1.0 if value else 0.0
        level, channel = round(x * 127), (mapping.channel or 1) - 1
        if mapping.control == "note":
            message = self.backend.message("note_on", channel=channel, note=mapping.number, velocity=level)
        elif mapping.control == "cc":
            message = self.backend.message("control_change", channel=channel, control=mapping.number, value=level)
        else:
            return
        try:
            self._output.send(message)
        except Exception as error:  # an output unplugged: the watcher reopens it
            log.debug("MIDI feedback failed: %s", error)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
    return bool(a == b)
