"""The control surface of a running LiveEngine: one per engine, shared by every transport (OSC, the control
page, MIDI, tempo sources).

A transport talks to it in two directions:

    surface = ControlSurface.of(engine, preset.osc)  # the engine's one surface, started on first use
    surface.handle(address, args, sender)   # in: any thread; never raises for what the sender got wrong
    surface.add_outlet(send)                # out: send(address, args) for every echo, error and status burst

`handle` routes the address (engine/control/routes.py) to a registry parameter or a command of the table
(engine/control/commands.py), coerces the arguments (engine/control/coerce.py), applies the network rule
(`check_writable`, `check_value`: here and nowhere else) and calls the engine, which validates the value once.
A refused message is one `<ns>/error s "<address>: <reason>"` to every outlet and one (throttled) log line;
the old value stays.

The network rule: what arrives from a controller changes live parameters. Rebuild keys (model.*, io.*,
stream.width, …) and a t_index_list of another length only when the running preset says
`osc.allow_rebuild_keys: true`; `file:` URIs never; `osc.*` never (read at start); /preset takes a name from
presets/, never a path.

Outlets are called on the engine thread (echoes), on the transports' threads (replies) and on the status
thread: they must only queue. Every outlet receives every message, with the namespace on the address.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.config import paths
from engine.config.registry import ParamSpec, registry
from engine.config.schema import OscConfig
from engine.control.coerce import coerce
from engine.control.messages import STATUS, Message, Outlet, blend_text, event_messages, status_args
from engine.control.routes import Router
from engine.control.transition import NextDuration
from engine.core.errors import DreamwireError
from engine.core.supervisor import SupervisedThread, spawn
from engine.live.events import EngineEvent
from engine.live.loop import LiveEngine

log = logging.getLogger(__name__)

Sender = tuple[str, int]

_SURFACES: weakref.WeakKeyDictionary[LiveEngine, ControlSurface] = weakref.WeakKeyDictionary()  # one per engine
_SURFACES_LOCK = threading.Lock()


class ControlSurface:
    @classmethod
    def of(cls, engine: LiveEngine, config: OscConfig) -> ControlSurface:
        """The engine's surface, started on first use: every transport of one engine shares it (and its
        /transition). close() ends it; the next call makes a new one."""
        with _SURFACES_LOCK:
            surface = _SURFACES.get(engine)
            if surface is None:
                surface = _SURFACES[engine] = cls(engine, config).start()
            return surface

    def __init__(self, engine: LiveEngine, config: OscConfig) -> None:
        self.engine, self.config = engine, config
        self.router = Router(config.namespace)
        self.transition = NextDuration()  # /transition: the duration of the changes that follow, for everyone
        self._outlets: tuple[Outlet, ...] = ()
        self._lock = threading.Lock()
        self._log = ThrottledLog(log)
        self._prompt = engine.preset.prompt.text  # what renders: a text, or a blend shown as "a:0.5 | b:0.5"
        self._prompt_sent: str | None = None
        self._status_thread: SupervisedThread | None = None
        self.midi: Any = None  # the MIDI transport (engine/control/midi.py) when midi.input is set: /midi/learn

    # ---- lifetime ---------------------------------------------------------------------------------------

    def start(self) -> ControlSurface:
        """Follow the engine's events, and send a status burst `osc.status_hz` times a second (0: never)."""
        self.engine.add_listener(self.on_event)
        if self.config.status_hz > 0:
            self._status_thread = spawn("dreamwire-status", self._status_loop)
        return self

    def close(self) -> None:
        """Safe to call twice."""
        with _SURFACES_LOCK:
            if _SURFACES.get(self.engine) is self:
                del _SURFACES[self.engine]
        self.engine.events.remove(self.on_event)
        if self._status_thread is not None:
            self._status_thread.stop()
            self._status_thread = None

    def _status_loop(self, stop: threading.Event) -> None:
        period = 1.0 / self.config.status_hz
        next_burst = time.perf_counter() + period
        while not stop.wait(max(0.0, next_burst - time.perf_counter())):
            self.emit_status()
            next_burst = max(next_burst + period, time.perf_counter())  # after a stall, no catch-up burst

    # ---- outlets ----------------------------------------------------------------------------------------

    def add_outlet(self, outlet: Outlet) -> None:
        with self._lock:
            self._outlets = (*self._outlets, outlet)

    def remove_outlet(self, outlet: Outlet) -> None:
        with self._lock:
            self._outlets = tuple(item for item in self._outlets if item is not outlet)

    def emit(self, messages: Sequence[Message]) -> None:
        for outlet in self._outlets:  # a tuple swapped whole under the lock: safe to read without it
            for address, args in messages:
                try:
                    outlet(address, args)
                except Exception:  # one transport's bug must not silence the others
                    log.exception("outlet %r failed on %s", outlet, address)

    def reply(self, relative: str, *args: Any) -> None:
        """One message at `relative` (the namespace is added) to every outlet."""
        self.emit([(self.router.out(relative), list(args))])

    # ---- incoming -----------------------------------------------------------------------------------------

    def handle(self, address: str, args: Sequence[Any], sender: Sender | None = None) -> None:
        """One message from a transport; never raises for anything the sender got wrong."""
        try:
            route = self.router.route(address)
            if route.command is not None:
                route.command.handler(self, args)
            else:
                spec = registry()[route.target]
                self.check_writable(spec)
                self.set_value(route.target, coerce(spec, args))
        except DreamwireError as error:
            self.refuse(address, str(error), sender)

    def newest_wins(self, address: str) -> bool:
        """In a run of messages to `address`, only the newest matters (a parameter, a blend): a transport may
        drop the older ones of a burst unread. What the engine would supersede anyway; it answers nothing."""
        try:
            route = self.router.route(address)
        except DreamwireError:
            return False  # an unknown address: each one is answered
        return route.command is None or route.command.newest_wins

    def refuse(self, address: str, reason: str, sender: Sender | None = None) -> None:
        line = f"{address}: {reason}"
        self.reply("/error", line)
        self._log.warning("refused %s%s", line, f" (from {sender[0]})" if sender else "")

    def set_value(self, path: str, value: Any) -> None:
        """The network rule, then the engine (which validates the value, once), timed by /transition."""
        self.check_value(path, value)
        self.engine.set(path, value, **self.transition.kwargs())

    def check_writable(self, spec: ParamSpec) -> None:
        if spec.startup:
            raise DreamwireError(f"{spec.path} is read at start; it cannot change over the network")
        if not spec.live and not self.config.allow_rebuild_keys:
            raise DreamwireError(
                f"{spec.path} is a rebuild key: refused over the network unless the preset sets "
                "osc.allow_rebuild_keys: true"
            )

    def check_value(self, path: str, value: Any) -> None:
        uris: list[Any] = []
        if path.startswith("io.") or (path.startswith("controlnets.") and path.endswith(".input")):
            uris = value if isinstance(value, list) else [value]
        elif path == "controlnets" and isinstance(value, list):  # entries as sent: dicts, not yet validated
            uris = [entry.get("input") for entry in value if isinstance(entry, dict)]
        for uri in uris:
            if str(uri).strip().lower().startswith("file:"):
                raise DreamwireError(f"{path}: file: URIs are refused over the network ({uri!r})")
        for name in _style_files(path, value):
            if _local_file(name):
                raise DreamwireError(f"{path}: a file path is refused over the network ({name!r}); name a hub id")
        if path == "stream.t_index_list" and value and not self.config.allow_rebuild_keys:  # []: the schema's
            steps = len(self.engine.requested.snapshot().stream.t_index_list)
            if len(value) != steps:
                raise DreamwireError(
                    f"stream.t_index_list {value}: {len(value)} steps instead of {steps} would rebuild the pipeline,"
                    " refused over the network unless the preset sets osc.allow_rebuild_keys: true"
                )

    def writable(self, spec: ParamSpec) -> bool:
        try:
            self.check_writable(spec)
        except DreamwireError:
            return False
        return True

    def value(self, path: str) -> Any:
        """The value in effect (read from another thread: one attribute read, no lock needed); tempo.bpm is the
        beat clock's, wherever the tempo comes from (Link, MIDI clock, taps, /tempo/beat)."""
        live = self.engine.tempo.live_value(path)
        return paths.read(self.engine.preset, path) if live is None else live

    # ---- outgoing -----------------------------------------------------------------------------------------

    def on_event(self, event: EngineEvent) -> None:
        """An engine event (on the engine thread): its echo to every outlet; the prompt that renders, once."""
        messages = event_messages(event, self.router.out)
        if event.kind == "applied" and event.path in ("prompt.text", "prompt.blend"):
            self._prompt = str(event.value) if event.path == "prompt.text" else blend_text(event.value)
            messages += self._prompt_message()
        if messages:
            self.emit(messages)

    def status_values(self) -> dict[str, Any]:
        """The engine's status: its own numbers, the supervisor's, and the counters transports add to
        engine.status_sources."""
        return self.engine.status()

    def status_messages(self) -> list[Message]:
        """The numeric status for OSC In CHOP (unknown values are left out), and the prompt when it changed."""
        now = self.status_values()
        messages = []
        for item in STATUS:
            args = status_args(now.get(item.key), item.osc_type)
            if args is not None:
                messages.append((self.router.out(item.address), args))
        return messages + self._prompt_message()

    @property
    def prompt_shown(self) -> str:
        """The prompt that renders: a text, or a blend shown as "a:0.5 | b:0.5"."""
        return self._prompt

    def emit_status(self) -> None:
        self.emit(self.status_messages())

    def _prompt_message(self) -> list[Message]:
        """`/status/prompt` when what renders changed since it was last sent (a text or a blend)."""
        prompt = self._prompt
        if prompt == self._prompt_sent:
            return []
        self._prompt_sent = prompt
        return [(self.router.out("/status/prompt"), [prompt])]


class ThrottledLog:
    """At most `limit` lines a second from one source; the rest are counted and reported once, so a controller
    that floods bad messages cannot flood the terminal."""

    def __init__(self, logger: logging.Logger, limit: int = 20) -> None:
        self.logger, self.limit = logger, limit
        self._second, self._count, self._dropped = 0, 0, 0

    def warning(self, message: str, *args: Any) -> None:
        second = int(time.monotonic())
        if second != self._second:
            if self._dropped:
                self.logger.warning("%d more refused messages in the last second (not shown)", self._dropped)
            self._second, self._count, self._dropped = second, 0, 0
        self._count += 1
        if self._count <= self.limit:
            self.logger.warning(message, *args)
        else:
            self._dropped += 1


def _style_files(path: str, value: Any) -> list[str]:
    """What a LoRA or IP-Adapter change names that could be a file (never taken from the network)."""
    if path == "loras" and isinstance(value, list):  # entries as sent: dicts, not yet validated
        return [str(entry.get("id")) for entry in value if isinstance(entry, dict)]
    if (path.startswith("loras.") and path.endswith(".id")) or path in (
        "ip_adapter.model",
        "ip_adapter.image_encoder",
        "ip_adapter.image",
    ):
        return [] if value is None else [str(value)]
    return []


def _local_file(name: str) -> bool:
    """A local path (absolute, relative, home, a Windows drive, a file: URI, or anything that exists here)."""
    text = name.strip()
    if text.lower().startswith("file:") or text.startswith(("/", "./", "../", "~", "\\")) or "\\" in text:
        return True
    if len(text) > 1 and text[1] == ":":  # C:\… or C:/…
        return True
    return Path(text).expanduser().exists()
