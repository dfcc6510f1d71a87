"""What the engine tells its controllers: a change took effect, or applying it failed.

Every request sent to the engine ends in exactly one event carrying its request id: "applied" (value: the value
now in effect), "error" (message: one line naming the value and why: refused when applied, an encoding or a
rebuild failed) or "superseded" (a newer request for the same thing arrived first: the newest wins, which is no
error: a text field sends on every keystroke). A rebuild also reports itself, path "rebuild".

Listeners run on the engine thread, so they must be quick and never block: the OSC bridge only puts the
event on its own queue. A listener that raises is logged and kept; it never ends the loop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from engine.core.errors import DreamwireError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineEvent:
    kind: Literal["applied", "error", "superseded"]
    path: str  # a registry path ("prompt.text") or a command ("prompt.blend", "seed.blend", "reset", "rebuild")
    value: Any = None  # applied: the value now in effect
    message: str = ""  # error, superseded: one line naming the value and why
    request_id: int | None = None  # the id set() / blend_*() / pause() / reset() returned; None for "rebuild"


Listener = Callable[[EngineEvent], None]


class Request(Protocol):
    """What an outcome names: any control (engine/live/controls.py)."""

    @property
    def path(self) -> str: ...
    @property
    def value(self) -> Any: ...
    @property
    def request_id(self) -> int: ...


class EventHub:
    """Fan-out of EngineEvents to listeners that other threads add or remove at any time."""

    def __init__(self) -> None:
        self._listeners: tuple[Listener, ...] = ()
        self._lock = threading.Lock()

    def add(self, listener: Listener) -> None:
        with self._lock:
            self._listeners = (*self._listeners, listener)

    def remove(self, listener: Listener) -> None:
        with self._lock:
            self._listeners = tuple(item for item in self._listeners if item is not listener)

    def emit(self, event: EngineEvent) -> None:
        for listener in self._listeners:  # a tuple swapped whole under the lock: safe to read without it
            try:
                listener(event)
            except Exception:  # a controller's bug must not end the show
                log.exception("event listener %r failed on %s", listener, event)

    # ---- a request's outcome: exactly one of these per request ---------------------------------------------

    def applied(self, request: Request, value: Any = None) -> None:
        if getattr(request, "modulated", False):
            return  # an LFO's value, every frame: no echo
        self.emit(EngineEvent("applied", request.path, value=value, request_id=request.request_id))

    def refused(self, request: Request, why: str) -> None:
        """One log line and an error event naming the value and why it was not applied."""
        message = _not_applied(request, why)
        log.error("%s", message)
        self.emit(EngineEvent("error", request.path, message=message, request_id=request.request_id))

    def superseded(self, request: Request, why: str) -> None:
        """The newest request wins: an older one still pending is dropped, told so, and only logged at debug."""
        message = _not_applied(request, why)
        log.debug("%s", message)
        self.emit(EngineEvent("superseded", request.path, message=message, request_id=request.request_id))


def _not_applied(request: Request, why: str) -> str:
    shown = "" if request.value is None else f" {shown_value(request.value)}"
    return f"{request.path}{shown} was not applied: {why}"


def shown_value(value: Any, limit: int = 120) -> str:
    """A value for a one-line message, shortened."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def one_line(error: BaseException) -> str:
    """An exception as one line: the message alone for ours, with the type for anything else."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if isinstance(error, DreamwireError) else f"{type(error).__name__}: {text}"
