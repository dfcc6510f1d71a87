"""file: bridge: a clip (.npy, video, image folder) as a Source, and a ClipWriter as a Sink."""

from __future__ import annotations

import os
import time
from collections.abc import Generator
from pathlib import Path

import numpy as np

from bridges.clip_io import ClipWriter, iter_clip
from bridges.pacing import Pacer
from engine.core.errors import DreamwireError
from engine.core.frames import Frame


class FileSource:
    """Reads a clip; paced drift-free at `fps` (None or 0 = as fast as the reader asks); `loop` restarts at the end."""

    def __init__(self, path: str | os.PathLike[str], fps: float | None = None, loop: bool = False) -> None:
        self.pacer = Pacer(fps, "file source")
        self.path = Path(path)
        self.fps = fps or None
        self.loop = loop
        self._frames: Generator[np.ndarray, None, None] | None = None
        self._index = 0  # keeps counting across loops and re-opens

    @property
    def name(self) -> str:
        return f"file:{self.path}"

    def open(self) -> None:
        self.close()
        self._frames = iter_clip(self.path)  # validates now: a bad clip raises here
        self.pacer.restart(self._index)

    def read(self) -> Frame | None:
        if self._frames is None:
            raise DreamwireError(f"file source {self.path}: read() before open()")
        image = next(self._frames, None)
        if image is None and self.loop:
            self._frames.close()
            self._frames = iter_clip(self.path)
            image = next(self._frames, None)  # still None only for a clip that became empty
        if image is None:
            return None
        self.pacer.wait(self._index)
        frame = Frame(image=image, index=self._index, capture_time=time.perf_counter())
        self._index += 1
        return frame

    def close(self) -> None:
        if self._frames is not None:
            self._frames.close()  # closes a video container
            self._frames = None


class FileSink:
    """Writes frames to a clip via ClipWriter; close() finishes the file.

    Re-opening after close() starts the file over (the io_threads worker does that after a write error).
    """

    def __init__(self, path: str | os.PathLike[str], fps: float = 30.0) -> None:
        self.path = Path(path)
        self.fps = fps
        self._writer: ClipWriter | None = None

    @property
    def name(self) -> str:
        return f"file:{self.path}"

    def open(self) -> None:
        self.close()
        self._writer = ClipWriter(self.path, fps=self.fps)

    def write(self, frame: Frame) -> None:
        if self._writer is None:
            raise DreamwireError(f"file sink {self.path}: write() before open()")
        self._writer.write(frame.image)

    def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()
