"""Control messages: validated where they are sent (any thread), applied by the engine thread between frames.

A bad value is rejected at send time with a one-line DreamwireError and the old value is kept; nothing is
queued. `Duration` (engine/live/transitions.py) turns a change into a timed transition (seconds or output frames).
Every control carries a request id, given in the order the controls are queued; the engine reports each one's
outcome as an EngineEvent with that id.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import ValidationError

from engine.config import paths
from engine.config.presets import describe_validation_error
from engine.config.registry import ParamSpec, registry
from engine.config.schema import Preset
from engine.core.errors import DreamwireError
from engine.live.transitions import CUT, Duration

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SetValue:
    path: str
    value: Any
    duration: Duration = CUT
    bridges: tuple[Any, ...] = ()  # io.input / io.outputs: the bridges, built (not opened) by the sender
    request_id: int = 0
    at_beat: float | None = None  # quantised: held until this beat (engine/live/quantiser.py); None: next frame
    modulated: bool = False  # an LFO's value (engine/live/modulators.py): into the pipeline only, not stored, no event


@dataclass(frozen=True)
class BlendPrompts:
    path: ClassVar[str] = "prompt.blend"
    items: tuple[tuple[str, float], ...]
    method: Literal["linear", "slerp"] = "slerp"
    duration: Duration = CUT
    request_id: int = 0
    at_beat: float | None = None

    @property
    def value(self) -> tuple[tuple[str, float], ...]:
        return self.items


@dataclass(frozen=True)
class BlendSeeds:
    path: ClassVar[str] = "seed.blend"
    items: tuple[tuple[int, float], ...]
    duration: Duration = CUT
    request_id: int = 0
    at_beat: float | None = None

    @property
    def value(self) -> tuple[tuple[int, float], ...]:
        return self.items


@dataclass(frozen=True)
class Pause:
    path: ClassVar[str] = "pause"
    paused: bool
    request_id: int = 0

    @property
    def value(self) -> bool:
        return self.paused


@dataclass(frozen=True)
class Reset:
    path: ClassVar[str] = "reset"
    request_id: int = 0
    value: ClassVar[None] = None


Control = SetValue | BlendPrompts | BlendSeeds | Pause | Reset


def spec_of(path: str) -> ParamSpec:
    """The registry entry of `path`; a DreamwireError naming the allowed paths if there is none."""
    spec = registry().get(path)
    if spec is None:
        raise DreamwireError(f"unknown parameter {path!r} (allowed: {', '.join(registry())})")
    return spec


class RequestedValues:
    """The preset as requested so far: each new value is validated against it (so cross-field checks such as
    t_index_list against num_inference_steps see the latest values), under a lock for concurrent senders.

    A change is validated once: on a shallow copy of its section (the schema's validated assignment replaces the
    field in the copy, never a value the original shares), which becomes the requested section if it is kept."""

    def __init__(self, preset: Preset) -> None:
        self._preset = preset.model_copy(deep=True)
        self._latest: dict[str, int] = {}  # path -> the request id that set its requested value
        self._lock = threading.Lock()

    def validate(self, path: str, value: Any, keep: bool = True, request_id: int = 0) -> Any:
        """The value as the schema coerces it; raises DreamwireError naming the key and value.
        keep=False checks a value without making it the requested one (e.g. a seed inside a blend)."""
        if not keep:
            with self._lock:
                return self._checked(path, value)[1]
        with self.change(path, value, request_id) as checked:
            return checked

    @contextmanager
    def change(self, path: str, value: Any, request_id: int) -> Iterator[Any]:
        """Validate `value` for `path` and yield it as coerced; it becomes the requested value when the block
        ends without raising (the block may refuse it, e.g. a URI whose bridge cannot be built)."""
        with self._lock:
            (top, new), checked = self._checked(path, value)
            yield checked
            # Already validated (the section, or the list with the changed entry): a validated assignment to the
            # preset would run the checks a second time (the preset itself has no check across sections).
            self._preset.__dict__[top] = new
            self._latest[path] = request_id

    def _checked(self, path: str, value: Any) -> tuple[tuple[str, Any], Any]:
        """((top-level name, its value with the change), the value as coerced); the requested preset is not
        touched (engine/config/paths.py)."""
        spec_of(path)
        try:
            top, new, checked = paths.assigned(self._preset, path, value)
        except ValidationError as error:
            raise DreamwireError(describe_validation_error(error, prefix=paths.prefix(path))) from None
        return (top, new), checked

    def revert(self, path: str, value: Any, request_id: int) -> None:
        """A request that could not be applied (a failed rebuild): its path goes back to `value`, the one in effect,
        unless a newer request has set the path since."""
        with self._lock:
            if self._latest.get(path) != request_id:
                return
            try:
                paths.store(self._preset, path, value)
            except (
                ValidationError,
                DreamwireError,
            ) as error:  # the value in effect no longer fits newer requests
                log.debug("%s: not reverted to %r (%s)", path, value, error)

    def snapshot(self) -> Preset:
        with self._lock:
            return self._preset.model_copy(deep=True)
