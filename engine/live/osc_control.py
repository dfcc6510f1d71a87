"""What each OSC message does: an address of the space (engine/live/osc_addresses.py) → a LiveEngine call.

Handlers run on the OSC server's thread. They validate and call the engine's thread-safe methods (set,
blend_prompts, blend_seeds, pause, reset); they never touch torch. A refused message (unknown address, wrong
arity, a bad or out-of-range value, a key the network may not change) is one `/dreamwire/error s
"<address>: <reason>"` at the feedback address and one log line; the old value stays.

What the network may do: change live parameters. Rebuild keys (model.*, io.*, stream.width, …) and a
t_index_list of another length only when the preset says `osc.allow_rebuild_keys: true`; `file:` URIs
never; `osc.*` never (read at start); /preset takes a name from presets/, never a path.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from bridges.osc_feedback import Message, OscFeedback
from engine.config.presets import available_presets, load_preset
from engine.config.registry import ParamSpec, registry
from engine.config.schema import OscConfig
from engine.core.errors import DreamwireError
from engine.live.controls import Duration
from engine.live.events import EngineEvent
from engine.live.loop import LiveEngine
from engine.live.osc_addresses import (
    COMMANDS,
    STATUS_ADDRESSES,
    AddressSpace,
    coerce,
    join_text,
    osc_args,
    osc_type,
    parameter_address,
    scalar,
    strength_to_t_index_list,
    t_index_list_to_strength,
)

log = logging.getLogger(__name__)

PRESET_SECTIONS = ("model", "stream", "prompt", "filter")  # what /preset changes; io and osc stay as started
PRESET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


class OscControl:
    def __init__(self, engine: LiveEngine, config: OscConfig, feedback: OscFeedback | None = None) -> None:
        self.engine = engine
        self.config = config
        self.space = AddressSpace(config.namespace)
        self.feedback = feedback  # None: replies are dropped (errors are still logged)
        self.seconds: float | None = None  # /transition: the duration of the changes that follow
        self.frames: int | None = None
        self.counters: Callable[[], dict[str, int]] = dict  # the OSC server's, once it exists
        self._last_prompt: str | None = None
        self._log = ThrottledLog(log)
        self._commands: dict[str, Callable[[Sequence[Any]], None]] = {
            "prompt_blend": self._prompt_blend,
            "seed_blend": self._seed_blend,
            "prompt_list": self._prompt_list,
            "seed_list": self._seed_list,
            "transition": self._transition,
            "transition_frames": self._transition_frames,
            "pause": self._pause,
            "play": self._play,
            "reset": self._reset,
            "preset": self._preset,
            "get": self._get,
            "status": self._status,
            "get_status": self._get_status,
            "strength": self._strength,
        }

    # ---- incoming ------------------------------------------------------------------------------------

    def handle(self, address: str, args: Sequence[Any], sender: tuple[str, int] | None = None) -> None:
        """One message; never raises for anything the sender got wrong."""
        try:
            route = self.space.route(address)
            if route.command:
                self._commands[route.target](args)
            else:
                self.set(route.target, args)
        except DreamwireError as error:
            self.refuse(address, str(error))

    def refuse(self, address: str, reason: str) -> None:
        line = f"{address}: {reason}"
        self._reply("/error", line)
        self._log.warning("OSC %s", line)

    def set(self, path: str, args: Sequence[Any]) -> None:
        spec = registry()[path]
        self.check_writable(spec)
        value = coerce(spec, args)
        self.check_value(path, value)
        self.engine.set(path, value, seconds=self.seconds, frames=self.frames)

    def check_writable(self, spec: ParamSpec) -> None:
        if spec.startup:
            raise DreamwireError(f"{spec.path} is read at start; it cannot change over OSC")
        if not spec.live and not self.config.allow_rebuild_keys:
            raise DreamwireError(
                f"{spec.path} is a rebuild key: refused over OSC unless the preset sets osc.allow_rebuild_keys: true"
            )

    def check_value(self, path: str, value: Any) -> None:
        if path.startswith("io."):
            for uri in value if isinstance(value, list) else [value]:
                if str(uri).strip().lower().startswith("file:"):
                    raise DreamwireError(f"{path}: file: URIs are refused over OSC ({uri!r})")
        if path == "stream.t_index_list" and not self.config.allow_rebuild_keys:
            steps = len(self.engine.requested.snapshot().stream.t_index_list)
            if len(value) != steps:
                raise DreamwireError(
                    f"stream.t_index_list {value}: {len(value)} steps instead of {steps} would rebuild the pipeline,"
                    " refused over OSC unless the preset sets osc.allow_rebuild_keys: true"
                )

    def writable(self, spec: ParamSpec) -> bool:
        try:
            self.check_writable(spec)
        except DreamwireError:
            return False
        return True

    def value(self, path: str) -> Any:
        """The value in effect (read from another thread: one attribute read, no lock needed)."""
        section, name = path.split(".")
        return getattr(getattr(self.engine.preset, section), name)

    # ---- commands --------------------------------------------------------------------------------------

    def _duration(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "frames": self.frames}

    def _prompt_blend(self, args: Sequence[Any]) -> None:
        items, words = [], []
        for arg in args:
            if isinstance(arg, int | float) and not isinstance(arg, bool):
                if not words:
                    raise DreamwireError(f"weight {arg!r} has no text before it (expects s f s f … [s method])")
                items.append((join_text(words), float(arg)))
                words = []
            else:
                words.append(arg)
        method = join_text(words) if words else "slerp"
        if not items:
            raise DreamwireError("expects text and weight pairs: s f s f … [s method]")
        self.engine.blend_prompts(items, method=method, **self._duration())  # type: ignore[arg-type]

    def _seed_blend(self, args: Sequence[Any]) -> None:
        if not args or len(args) % 2:
            raise DreamwireError(f"expects seed and weight pairs: i f i f …, got {len(args)} arguments")
        pairs = [(scalar("int", args[i]), scalar("float", args[i + 1])) for i in range(0, len(args), 2)]
        self.engine.blend_seeds(pairs, **self._duration())

    def _json_pairs(self, args: Sequence[Any], what: str) -> list[Any]:
        text = join_text(args)
        try:
            pairs = json.loads(text)
        except json.JSONDecodeError as error:
            raise DreamwireError(f"expects a JSON list of [{what}, weight], got {text!r} ({error.msg})") from None
        if not isinstance(pairs, list) or not pairs or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise DreamwireError(f"expects a JSON list of [{what}, weight] pairs, got {text!r}")
        return pairs

    def _prompt_list(self, args: Sequence[Any]) -> None:
        pairs = self._json_pairs(args, "text")
        items = [(join_text([text]), scalar("float", weight)) for text, weight in pairs]
        self.engine.blend_prompts(items, method="slerp", **self._duration())

    def _seed_list(self, args: Sequence[Any]) -> None:
        pairs = self._json_pairs(args, "seed")
        self.engine.blend_seeds([(scalar("int", s), scalar("float", w)) for s, w in pairs], **self._duration())

    def _transition(self, args: Sequence[Any]) -> None:
        seconds = self._one(args, "float")
        Duration(seconds=seconds)  # range check: one line naming the value
        self.seconds, self.frames = seconds, None

    def _transition_frames(self, args: Sequence[Any]) -> None:
        frames = self._one(args, "int")
        Duration(frames=frames)
        self.seconds, self.frames = None, frames

    def _pause(self, args: Sequence[Any]) -> None:
        self.engine.pause(True if not args else self._one(args, "bool"))

    def _play(self, args: Sequence[Any]) -> None:
        self.engine.pause(False)

    def _reset(self, args: Sequence[Any]) -> None:
        if self._momentary(args):
            self.engine.reset()

    def _status(self, args: Sequence[Any]) -> None:
        if self._momentary(args) and self.feedback is not None:
            self.feedback.defer(self.status_messages)

    def _get_status(self, args: Sequence[Any]) -> None:
        if self._momentary(args):
            status = self.engine.status()
            self._reply(
                "/status", "rebuilding" if status["rebuilding"] else "paused" if status["paused"] else "running"
            )

    def _momentary(self, args: Sequence[Any]) -> bool:
        """A button: no argument (or nil) or a true value acts; 0 is the button's release and is ignored."""
        return not args or args[0] is None or bool(self._one(args, "bool"))

    def _strength(self, args: Sequence[Any]) -> None:
        stream = self.engine.requested.snapshot().stream
        indices = strength_to_t_index_list(
            self._one(args, "float"), len(stream.t_index_list), stream.num_inference_steps
        )
        self.engine.set("stream.t_index_list", indices, **self._duration())

    def _get(self, args: Sequence[Any]) -> None:
        address = join_text(args)
        try:
            route = self.space.route(address)
        except DreamwireError as error:
            raise DreamwireError(f"{address}: {error}") from None
        if route.target == "strength":
            stream = self.engine.preset.stream
            self._reply("/strength", t_index_list_to_strength(stream.t_index_list, stream.num_inference_steps))
        elif route.command:
            raise DreamwireError(f"{address} is a command; it has no value")
        else:
            self._reply(parameter_address(route.target), *osc_args(self.value(route.target)))

    def _preset(self, args: Sequence[Any]) -> None:
        name = join_text(args)
        if not PRESET_NAME.fullmatch(name):
            raise DreamwireError(f"/preset takes a name from presets/, never a path: {name!r}")
        if name not in available_presets():
            raise DreamwireError(f"unknown preset {name!r} (available: {', '.join(available_presets())})")
        target = load_preset(name)
        current = self.engine.requested.snapshot()
        changes = [
            (spec, getattr(getattr(target, spec.path.split(".")[0]), spec.path.split(".")[1]))
            for spec in registry().values()
            if spec.path.split(".")[0] in PRESET_SECTIONS
        ]
        changes = [(spec, value) for spec, value in changes if value != _get_path(current, spec.path)]
        refused = [spec.path for spec, _ in changes if not self.writable(spec)]
        if refused:
            raise DreamwireError(
                f"preset {name!r} changes rebuild keys {', '.join(refused)}: refused over OSC unless the preset "
                "sets osc.allow_rebuild_keys: true"
            )
        for spec, value in changes:  # all checked before any is sent: a preset is taken whole or not at all
            self.check_value(spec.path, value)
        for spec, value in _schedule_first(changes, current.stream.num_inference_steps):
            self.engine.set(spec.path, value, **self._duration())
        log.info("OSC /preset %s: %d values changed", name, len(changes))

    def _one(self, args: Sequence[Any], kind: str) -> Any:
        if len(args) != 1:
            raise DreamwireError(f"expects 1 argument ({kind}), got {len(args)}")
        return scalar(kind, args[0])

    # ---- outgoing ----------------------------------------------------------------------------------------

    def _reply(self, relative: str, *args: Any) -> None:
        if self.feedback is not None:
            self.feedback.send(self.space.out(relative), *args)

    def status_messages(self) -> list[Message]:
        """The numeric status for OSC In CHOP (unknown values are left out), and the prompt when it changed."""
        status = {**self.engine.status(), **self.counters()}
        messages: list[Message] = [
            (self.space.out(address), [status[key]])
            for key, (address, _) in STATUS_ADDRESSES.items()
            if status.get(key) is not None
        ]
        prompt = self.engine.preset.prompt.text
        if prompt != self._last_prompt:
            self._last_prompt = prompt
            messages.append((self.space.out("/status/prompt"), [prompt]))
        return messages

    def on_event(self, event: EngineEvent) -> None:
        """An engine event (on the engine thread): only queued here, made into messages on the feedback thread."""
        if self.feedback is not None:
            self.feedback.defer(lambda: self.event_messages(event))

    def event_messages(self, event: EngineEvent) -> list[Message]:
        address = self.space.out(parameter_address(event.path))
        if event.kind == "error":  # the engine has logged it
            return [(self.space.out("/error"), [f"{address}: {event.message}"])]
        if event.path in registry():
            messages = [(address, osc_args(event.value))]
            if event.path == "prompt.text":
                self._last_prompt = str(event.value)
                messages.append((self.space.out("/status/prompt"), [self._last_prompt]))
            return messages
        if event.path == "prompt.blend":
            text = " | ".join(f"{t}:{w:g}" for t, w in event.value) if _is_pairs(event.value) else str(event.value)
            self._last_prompt = None  # the next status burst sends the text again if the blend is replaced
            return [(self.space.out("/status/prompt"), [text])]
        if event.path == "pause":
            return [(self.space.out("/pause"), osc_args(bool(event.value)))]
        return []

    # ---- OSCQuery ---------------------------------------------------------------------------------------

    def oscquery_nodes(self) -> dict[str, dict[str, Any]]:
        """{full address: OSCQuery attributes} for every parameter, command and status value, with VALUE now."""
        nodes: dict[str, dict[str, Any]] = {}
        for spec in registry().values():
            value = self.value(spec.path)
            node: dict[str, Any] = {
                "TYPE": osc_type(spec, value),
                "ACCESS": 3 if self.writable(spec) else 1,
                "VALUE": osc_args(value),
                "DESCRIPTION": f"{spec.doc} ({spec.when})",
            }
            if spec.choices:
                node["RANGE"] = [{"VALS": list(spec.choices)}]
            elif spec.kind == "bool":
                node["RANGE"] = [{"MIN": 0, "MAX": 1}]
            elif spec.minimum is not None or spec.maximum is not None:
                node["RANGE"] = [{"MIN": _number(spec.minimum), "MAX": _number(spec.maximum)}]
            nodes[self.space.out(parameter_address(spec.path))] = node
        stream = self.engine.preset.stream
        commands: dict[str, dict[str, Any]] = {
            "prompt_blend": {"TYPE": "sf"},
            "seed_blend": {"TYPE": "if"},
            "transition": {
                "TYPE": "f",
                "ACCESS": 3,
                "VALUE": [self.seconds or 0.0],
                "RANGE": [{"MIN": 0, "MAX": 3600}],
            },
            "transition_frames": {"TYPE": "i", "ACCESS": 3, "VALUE": [self.frames or 0]},
            "pause": {"TYPE": "i", "ACCESS": 3, "VALUE": [int(self.engine.paused)], "RANGE": [{"MIN": 0, "MAX": 1}]},
            "reset": {"TYPE": "N"},
            "preset": {"TYPE": "s", "RANGE": [{"VALS": available_presets()}]},
            "get": {"TYPE": "s"},
            "status": {"TYPE": "N"},
            "strength": {
                "TYPE": "f",
                "ACCESS": 3,
                "VALUE": [t_index_list_to_strength(stream.t_index_list, stream.num_inference_steps)],
                "RANGE": [{"MIN": 0.0, "MAX": 1.0}],
            },
        }
        for route in COMMANDS:
            nodes[self.space.out(route.address)] = {"ACCESS": 2, "DESCRIPTION": route.doc, **commands[route.target]}
        status = {**self.engine.status(), **self.counters()}
        for key, (address, doc) in STATUS_ADDRESSES.items():
            node = {
                "TYPE": "i" if key in ("frames", "dropped", "osc_malformed") else "f",
                "ACCESS": 1,
                "DESCRIPTION": doc,
            }
            if status.get(key) is not None:
                node["VALUE"] = [status[key]]
            nodes[self.space.out(address)] = node
        return nodes


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
                self.logger.warning("OSC: %d more refused messages in the last second (not shown)", self._dropped)
            self._second, self._count, self._dropped = second, 0, 0
        self._count += 1
        if self._count <= self.limit:
            self.logger.warning(message, *args)
        else:
            self._dropped += 1


def _get_path(preset: Any, path: str) -> Any:
    section, name = path.split(".")
    return getattr(getattr(preset, section), name)


def _schedule_first(changes: list[tuple[ParamSpec, Any]], steps_now: int) -> list[tuple[ParamSpec, Any]]:
    """Order a preset's changes so that each is valid against the ones before it: a longer schedule before the
    t_index_list that needs it, a shorter one after."""

    def key(item: tuple[ParamSpec, Any]) -> int:
        spec, value = item
        if spec.path == "stream.num_inference_steps":
            return -1 if value > steps_now else 1
        return 0

    return sorted(changes, key=key)


def _number(value: float | None) -> float | int | None:
    return int(value) if value is not None and float(value).is_integer() else value


def _is_pairs(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(v, list | tuple) and len(v) == 2 for v in value)
