"""A deterministic moving test pattern: the source to use when no camera or clip is at hand.

The image is a pure function of (index, width, height), so tests and benchmarks are reproducible; pacing is
drift-free (frame n is due at start + n/fps, not after n cumulative sleeps).
"""

from __future__ import annotations

import math
import time

import numpy as np

from bridges.pacing import Pacer
from engine.core.errors import DreamwireError
from engine.core.frames import Frame

_BITS = 16  # frame-index strip at the bottom: 16 cells, white = 1, most significant bit first


def pattern_image(index: int, width: int, height: int) -> np.ndarray:
    """The test image for frame `index`: (height, width, 3) uint8 RGB.

    Red: a horizontal sawtooth scrolling right; green: a vertical sawtooth scrolling down; blue: 8 vertical bars
    moving left; a white square with a black outline on a Lissajous path; the index in binary along the bottom.
    Everything is built from 1-D rows/columns and broadcast, so 512x512 costs well under a millisecond or two.
    """
    if width < 8 or height < 8:
        raise DreamwireError(f"pattern size {width}x{height} is too small: width and height must be >= 8")
    t = index / 30.0  # phase in "seconds at 30 fps"; independent of the pacing fps so the image depends on index only
    x = np.arange(width, dtype=np.float32) / width  # (W,)
    y = np.arange(height, dtype=np.float32) / height  # (H,)
    red = ((x + 0.25 * t) % 1.0 * 255.0).astype(np.uint8)  # (W,)
    green = ((y + 0.15 * t) % 1.0 * 255.0).astype(np.uint8)  # (H,)
    blue = np.where((x * 8.0 - 0.5 * t) % 1.0 < 0.5, 255, 40).astype(np.uint8)  # (W,)

    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:, :, 0] = red[None, :]
    image[:, :, 1] = green[:, None]
    image[:, :, 2] = blue[None, :]

    side = max(4, min(width, height) // 6)
    cx = (0.5 + 0.35 * math.sin(2.0 * math.pi * 0.20 * t)) * (width - side)
    cy = (0.5 + 0.35 * math.sin(2.0 * math.pi * 0.13 * t + 1.0)) * (height - side)
    x0, y0 = round(cx), round(cy)
    image[y0 : y0 + side, x0 : x0 + side] = 0
    image[y0 + 2 : y0 + side - 2, x0 + 2 : x0 + side - 2] = 255

    cell_w, cell_h = width // _BITS, max(2, height // 64)
    for bit in range(_BITS):
        on = (index >> (_BITS - 1 - bit)) & 1
        image[height - cell_h :, bit * cell_w : (bit + 1) * cell_w] = 255 if on else 0
    return image


class PatternSource:
    """Source of pattern_image frames at `fps` (0: unpaced, one frame per frame read, bridges/pacing.py)."""

    def __init__(self, width: int = 512, height: int = 512, fps: float = 30.0, name: str = "pattern") -> None:
        if width < 8 or height < 8:
            raise DreamwireError(f"pattern size {width}x{height} is too small: width and height must be >= 8")
        self.pacer = Pacer(fps, "pattern")
        self.width, self.height, self.fps = width, height, fps
        self._name = name
        self._index = 0  # keeps counting across re-opens so frame numbers stay unique

    @property
    def name(self) -> str:
        return self._name

    def open(self) -> None:
        self.pacer.restart(self._index)

    def read(self) -> Frame:
        image = pattern_image(self._index, self.width, self.height)
        self.pacer.wait(self._index)
        frame = Frame(image=image, index=self._index, capture_time=time.perf_counter())
        self._index += 1
        return frame

    def close(self) -> None:
        pass
