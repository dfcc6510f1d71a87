"""file: bridge: a clip (.npy, video, image folder) as a Source, and a ClipWriter as a Sink."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Generator
from pathlib import Path

import numpy as np
from PIL import Image

from bridges.clip_io import ClipWriter, iter_clip
from bridges.pacing import Pacer
from engine.core.errors import DreamwireError
from engine.core.frames import Frame

log = logging.getLogger(__name__)


class FileSource:
    """Reads a clip; paced drift-free at `fps` (None or 0: unpaced, one frame per frame read, bridges/pacing.py);
    `loop` restarts at the end."""

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

    A recording never loses what it has written. Frames of another size than the file's (a live stream.width
    change) are scaled to the file's size, logged once per size. Re-opening after a write error (the io_threads
    worker does that) never starts the file over: a file that has frames is finished and the recording goes on in
    the next numbered file (take1.mp4, then take1-2.mp4, take1-3.mp4 ...), logged.
    """

    def __init__(self, path: str | os.PathLike[str], fps: float = 30.0) -> None:
        self.path = Path(path)  # the file being written now
        self._first_path = self.path
        self.fps = fps
        self._writer: ClipWriter | None = None
        self._part = 1  # which numbered file of the recording is being written
        self._size: tuple[int, int] | None = None  # (H, W) of the file being written
        self._scaled_from: tuple[int, int] | None = None  # the frame size last scaled to the file's (logged once)

    @property
    def name(self) -> str:
        return f"file:{self.path}"

    def open(self) -> None:
        self.close()
        if self._size is not None:  # this file has frames: keep them, go on in the next one
            finished = self.path
            self._part += 1
            while self._numbered(self._part).exists():  # never over another recording either
                self._part += 1
            self.path = self._numbered(self._part)
            self._size = None
            log.warning("file sink: %s is finished; the recording goes on in %s", finished, self.path)
        self._writer = ClipWriter(self.path, fps=self.fps)

    def write(self, frame: Frame) -> None:
        if self._writer is None:
            raise DreamwireError(f"file sink {self.path}: write() before open()")
        image = frame.image
        size = (int(image.shape[0]), int(image.shape[1]))
        if self._size is None:
            self._size = size
        elif size != self._size:
            image = self._scaled(image, size)
        self._writer.write(image)

    def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            if writer.count == 0:
                self._size = None  # nothing written: a re-open may use the same file
            writer.close()

    def _scaled(self, image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        assert self._size is not None
        height, width = self._size
        if size != self._scaled_from:
            self._scaled_from = size
            log.warning(
                "file sink %s: frames are %dx%d now; scaling them to the file's %dx%d",
                self.path.name,
                size[1],
                size[0],
                width,
                height,
            )
        return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))

    def _numbered(self, part: int) -> Path:
        """The recording's file number `part` (2 and up): take1.mp4 → take1-2.mp4; frames/ → frames-2/."""
        first = self._first_path
        return first.with_name(f"{first.stem}-{part}{first.suffix}")
