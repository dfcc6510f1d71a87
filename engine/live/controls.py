"""Control messages: validated where they are sent (any thread), applied by the engine thread between frames.

A bad value is rejected at send time with a one-line DreamwireError and the old value is kept; nothing is
queued. `Duration` turns a change into a timed transition (seconds or output frames).
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from engine.config.presets import describe_validation_error
from engine.config.registry import registry
from engine.config.schema import Preset
from engine.core.errors import DreamwireError


@dataclass(frozen=True)
class Duration:
    seconds: float | None = None
    frames: int | None = None

    def __post_init__(self) -> None:
        if self.seconds is not None and self.frames is not None:
            raise DreamwireError(f"transition: give seconds or frames, not both (got {self.seconds}s, {self.frames})")
        if self.seconds is not None and not 0 <= self.seconds <= 3600:
            raise DreamwireError(f"transition seconds {self.seconds} is out of range [0, 3600]")
        if self.frames is not None and not 0 <= self.frames <= 100000:
            raise DreamwireError(f"transition frames {self.frames} is out of range [0, 100000]")

    @property
    def is_cut(self) -> bool:
        return not self.seconds and not self.frames


CUT = Duration()


@dataclass(frozen=True)
class SetValue:
    path: str
    value: Any
    duration: Duration = CUT
    bridges: tuple[Any, ...] = ()  # io.input / io.outputs: the bridges, built (not opened) by the sender


@dataclass(frozen=True)
class BlendPrompts:
    items: tuple[tuple[str, float], ...]
    method: Literal["linear", "slerp"] = "slerp"
    duration: Duration = CUT


@dataclass(frozen=True)
class BlendSeeds:
    items: tuple[tuple[int, float], ...]
    duration: Duration = CUT


@dataclass(frozen=True)
class Pause:
    paused: bool


@dataclass(frozen=True)
class Reset:
    pass


Control = SetValue | BlendPrompts | BlendSeeds | Pause | Reset


class RequestedValues:
    """The preset as requested so far: each new value is validated against it (so cross-field checks such as
    t_index_list against num_inference_steps see the latest values), under a lock for concurrent senders."""

    def __init__(self, preset: Preset) -> None:
        self._preset = preset.model_copy(deep=True)
        self._lock = threading.Lock()

    def validate(self, path: str, value: Any, keep: bool = True) -> Any:
        """The value as the schema coerces it; raises DreamwireError naming the key and value.
        keep=False checks a value without making it the requested one (e.g. a seed inside a blend)."""
        if path not in registry():
            raise DreamwireError(f"unknown parameter {path!r} (allowed: {', '.join(registry())})")
        section_name, name = path.split(".")
        with self._lock:
            section = copy.deepcopy(getattr(self._preset, section_name))
            try:
                setattr(section, name, value)
            except ValidationError as error:
                raise DreamwireError(describe_validation_error(error, prefix=section_name)) from None
            if keep:
                setattr(self._preset, section_name, section)
            return getattr(section, name)

    def snapshot(self) -> Preset:
        with self._lock:
            return self._preset.model_copy(deep=True)
