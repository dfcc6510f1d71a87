"""The sending side of the live engine: changes from other threads (OSC, the CLI, a script), each validated once
where it is sent, numbered, and queued for the engine thread (engine/live/control_queue.py).

A bad value raises a one-line DreamwireError and nothing is queued: the old value is kept. Each accepted change
returns its request id, which its EngineEvent will carry. Numbering, the requested values and the queue order
agree, because all three happen under one lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Literal

from bridges.base import Sink, Source
from bridges.uri import open_sink, open_source
from engine.config.registry import registry
from engine.config.schema import Preset
from engine.core.errors import DreamwireError
from engine.core.instance import Instance
from engine.live.blending import check_blend_weights
from engine.live.control_queue import ControlQueue
from engine.live.controls import BlendPrompts, BlendSeeds, Control, Pause, RequestedValues, Reset, SetValue, spec_of
from engine.live.targets import MORPHS
from engine.live.tempo import Tempo


class Requests:
    """set / blend_prompts / blend_seeds / pause / reset, from any thread, into `queue`."""

    def __init__(self, preset: Preset, instance: Instance, queue: ControlQueue, tempo: Tempo) -> None:
        self.tempo = tempo  # quantised changes (at_beat) and beat-length transitions
        self.requested = RequestedValues(preset)  # the values asked for (validated), ahead of the engine
        self.queue = queue
        self._instance = instance
        self._lock = threading.Lock()  # request ids, requested values and queue order agree
        self._next_id = 1

    def set(
        self,
        path: str,
        value: Any,
        seconds: float | None = None,
        frames: int | None = None,
        *,
        beats: float | None = None,
        bars: float | None = None,
        quantize: str | None = None,
    ) -> int:
        """Change one parameter (dotted path from the registry); raises DreamwireError on a bad value."""
        duration = self.tempo.duration(seconds, frames, beats, bars)
        spec = spec_of(path)
        at_beat = self.tempo.at_beat(path, quantize)
        if not duration.is_cut and spec.apply not in MORPHS and path not in MORPHS:
            movable = ", ".join(p for p, s in registry().items() if s.apply in MORPHS and not s.item)
            movable += ", controlnets.<i>.scale, loras.<i>.weight, ip_adapter.scale"
            raise DreamwireError(f"{path} cannot change over a duration, only at once (these can: {movable})")
        with self._lock:
            request_id = self._next_id
            with self.requested.change(path, value, request_id) as checked:
                # io: build the bridges here (building opens nothing), so a bad URI is refused to the sender.
                bridges: tuple[Source | Sink, ...] = ()
                if spec.apply == "source":
                    bridges = (open_source(checked, self._instance),)
                elif spec.apply == "sinks":
                    bridges = tuple(open_sink(uri, self._instance) for uri in checked)
                for uri in _control_inputs(path, checked):  # an external ControlNet's source: checked the same way
                    open_source(uri, self._instance)
            return self._queue_locked(SetValue(path, checked, duration, bridges, request_id, at_beat))

    def blend_prompts(
        self,
        items: Sequence[tuple[str, float]],
        method: Literal["linear", "slerp"] = "slerp",
        seconds: float | None = None,
        frames: int | None = None,
        *,
        beats: float | None = None,
        bars: float | None = None,
        quantize: str | None = None,
    ) -> int:
        """Blend the embeddings of several prompts by weight (normalised), at once or over a duration."""
        duration = self.tempo.duration(seconds, frames, beats, bars)
        at_beat = self.tempo.at_beat("prompt.blend", quantize)
        if method not in ("linear", "slerp"):
            raise DreamwireError(f"prompt.blend method {method!r} is unknown (allowed: linear, slerp)")
        blend = self._blend("prompt.blend", "prompt.text", items)
        return self._queue(lambda request_id: BlendPrompts(blend, method, duration, request_id, at_beat))

    def blend_seeds(
        self,
        items: Sequence[tuple[int, float]],
        seconds: float | None = None,
        frames: int | None = None,
        *,
        beats: float | None = None,
        bars: float | None = None,
        quantize: str | None = None,
    ) -> int:
        """Blend the fixed noise of several seeds by weight (slerp), at once or over a duration."""
        duration = self.tempo.duration(seconds, frames, beats, bars)
        at_beat = self.tempo.at_beat("seed.blend", quantize)
        blend = self._blend("seed.blend", "prompt.seed", items)
        return self._queue(lambda request_id: BlendSeeds(blend, duration, request_id, at_beat))

    def _blend(self, what: str, item_path: str, items: Sequence[tuple[Any, float]]) -> tuple[tuple[Any, float], ...]:
        """A blend's (thing, weight) pairs, each thing checked as `item_path` and the weights as blend weights."""
        pairs = _pairs(what, items)
        weights = check_blend_weights(what, [w for _, w in pairs])
        things = [self.requested.validate(item_path, thing, keep=False) for thing, _ in pairs]
        return tuple(zip(things, weights, strict=True))

    def pause(self, paused: bool = True) -> int:
        if paused not in (True, False):  # True, False, 1, 0
            raise DreamwireError(f"pause {paused!r} is not a bool (true/false or 1/0)")
        return self._queue(lambda request_id: Pause(bool(paused), request_id))

    def reset(self) -> int:
        return self._queue(lambda request_id: Reset(request_id))

    def _queue(self, make: Callable[[int], Control]) -> int:
        with self._lock:
            return self._queue_locked(make(self._next_id))

    def _queue_locked(self, control: Control) -> int:
        self._next_id += 1
        self.queue.put(control)
        return control.request_id


def _control_inputs(path: str, value: Any) -> list[str]:
    """The source URIs of external ControlNets that a change of `path` asks for."""
    if path == "controlnets":
        return [entry.input for entry in value if entry.input is not None]
    if path.startswith("controlnets.") and path.endswith(".input") and value is not None:
        return [value]
    return []


def _pairs(what: str, items: Sequence[tuple[Any, float]]) -> list[tuple[Any, float]]:
    """A blend's (thing, weight) pairs; a DreamwireError naming the items if they are not pairs, or none."""
    try:
        pairs = [(thing, weight) for thing, weight in items]
    except (TypeError, ValueError):
        raise DreamwireError(f"{what} items {items!r} must be (value, weight) pairs") from None
    if not pairs:
        raise DreamwireError(f"{what} needs at least one (value, weight) pair")
    return pairs
