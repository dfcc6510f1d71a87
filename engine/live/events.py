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
from typing import Any, Literal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineEvent:
    kind: Literal["applied", "error", "superseded"]
    path: str  # a registry path ("prompt.text") or a command ("prompt.blend", "seed.blend", "reset", "rebuild")
    value: Any = None  # applied: the value now in effect
    message: str = ""  # error, superseded: one line naming the value and why
    request_id: int | None = None  # the id set() / blend_*() / pause() / reset() returned; None for "rebuild"


Listener = Callable[[EngineEvent], None]


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
