"""What every frame bridge looks like: a Source produces Frames, a Sink consumes them.

Each bridge is driven by exactly one worker thread (engine/live/io_threads.py): open, read/write many times, close.
Platform bridges (Spout's GL context, for one) rely on that: every call comes from the same thread.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from engine.core.errors import DreamwireError
from engine.core.frames import Frame


class BridgeUnavailable(DreamwireError):
    """A bridge that cannot run here: not built yet, or its platform package is missing."""


@runtime_checkable
class Source(Protocol):
    @property
    def name(self) -> str: ...

    def open(self) -> None: ...

    def read(self) -> Frame | None:
        """Block until the next frame; None means the stream has ended."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Sink(Protocol):
    @property
    def name(self) -> str: ...

    def open(self) -> None: ...

    def write(self, frame: Frame) -> None: ...

    def close(self) -> None:
        """Release the device/port/file; files are complete once this returns."""
        ...
