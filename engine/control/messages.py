"""What the surface sends to its outlets: the echo of each applied change, each failure, and the status.

Messages are `(address, args)` with the namespace on the address; every outlet (the OSC feedback socket, the
control page's WebSocket) receives the same ones.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.config.registry import registry
from engine.control.coerce import osc_args
from engine.control.routes import parameter_address
from engine.live.events import EngineEvent

Message = tuple[str, list[Any]]
Outlet = Callable[[str, list[Any]], None]  # (address, args); must be quick: it runs on the engine thread too


@dataclass(frozen=True)
class StatusValue:
    key: str  # of LiveEngine.status(), a transport's counters or the supervisor's snapshot
    address: str  # relative to the namespace
    osc_type: str  # "i", "f" or "s"
    doc: str


STATUS: tuple[StatusValue, ...] = (
    StatusValue("fps_out", "/status/fps", "f", "Output frames per second."),
    StatusValue("latency_p50_ms", "/status/latency_ms", "f", "Input capture → output, median (ms)."),
    StatusValue("skip_rate", "/status/skip_rate", "f", "Share of frames the similarity filter skipped."),
    StatusValue("frames", "/status/frame", "i", "Output frames since start."),
    StatusValue("unet_ms", "/status/unet_ms", "f", "UNet time per frame (ms)."),
    StatusValue("dropped", "/status/dropped", "i", "Input frames dropped (a newer one came first)."),
    StatusValue("power_w", "/status/power_w", "f", "GPU power (W), only when known."),
    StatusValue("osc_malformed", "/status/malformed", "i", "Malformed OSC datagrams received."),
    StatusValue("osc_feedback_failed", "/status/feedback_failed", "i", "OSC feedback messages that failed to send."),
    StatusValue("thread_restarts", "/status/thread_restarts", "i", "Restarts of supervised threads that died."),
    StatusValue("threads_failing", "/status/threads_failing", "s", "Threads in a failure streak (names), or ''."),
    StatusValue("last_thread_error", "/status/thread_error", "s", "The newest thread death: `name: cause`."),
    StatusValue("source", "/status/source", "s", "The source's state (e.g. waiting for a camera), when known."),
    StatusValue("bpm", "/status/bpm", "f", "The tempo in effect (beats per minute)."),
    StatusValue("beat", "/status/beat", "f", "The beat now (bars are `tempo.quantum` beats from beat 0)."),
    StatusValue("peers", "/status/peers", "i", "Ableton Link peers in the session (0 for other tempo sources)."),
    StatusValue("midi_input", "/status/midi", "s", "The MIDI input in use, or the one waited for (when configured)."),
)


def status_args(value: Any, osc_type: str) -> list[Any] | None:
    """A status value as arguments; None when unknown (left out: OSC In CHOP keeps its last value)."""
    if value is None:
        return None
    if osc_type == "s":
        if isinstance(value, list | tuple):
            return [", ".join(str(item) for item in value)]
        return [value if isinstance(value, str) else json.dumps(value, default=str)]
    return [int(value) if osc_type == "i" else float(value)]


def blend_text(items: Any) -> str:
    """(("a forest", 0.7), ("a city", 0.3)) → 'a forest:0.7 | a city:0.3'."""
    return " | ".join(f"{text}:{weight:g}" for text, weight in items) if is_pairs(items) else str(items)


def event_messages(event: EngineEvent, out: Callable[[str], str]) -> list[Message]:
    """An engine event → its messages (`out` adds the namespace). A superseded request sends nothing: a newer
    request for the same thing is on its way, and its own event answers it."""
    if event.kind == "superseded":
        return []
    address = out(parameter_address(event.path))
    if event.kind == "error":  # the engine has logged it
        return [(out("/error"), [f"{address}: {event.message}"])]
    if event.kind != "applied":
        return []
    if event.path in registry():
        return [(address, osc_args(event.value))]
    if event.path in ("prompt.blend", "seed.blend") and is_pairs(event.value):
        return [(address, [item for pair in event.value for item in pair])]
    if event.path == "pause":
        return [(out("/pause"), osc_args(bool(event.value)))]
    if event.path == "reset":
        return [(out("/reset"), [])]
    return []


def is_pairs(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(v, list | tuple) and len(v) == 2 for v in value)
