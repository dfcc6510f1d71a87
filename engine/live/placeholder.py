"""A placeholder frame that names why there is no picture yet ("waiting for camera:0 — no camera found").

Until the source has produced its first frame, the engine sends this instead of nothing, so the preview page,
a Web Render TOP or a recording shows the reason rather than a blank; a new one goes out whenever the reason
changes. Drawn with PIL's ImageDraw on the engine thread, only while there is no picture (never per frame).
"""

from __future__ import annotations

import time
from typing import Protocol

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from engine.core.frames import Frame

_BACKGROUND = (24, 26, 32)  # RGB: a dark slate, unlike a black or brown frame from a model
_TITLE = (235, 235, 235)
_REASON = (240, 170, 60)


class WaitingSource(Protocol):
    """What the placeholder reads from a source worker (engine/live/io_threads.py SourceWorker)."""

    @property
    def name(self) -> str: ...

    @property
    def frames(self) -> int: ...

    @property
    def last_error(self) -> str | None: ...


def placeholder_image(height: int, width: int, title: str, reason: str = "") -> np.ndarray:
    """(height, width, 3) uint8 RGB: `title` and, below it in another colour, `reason`, wrapped to the width."""
    image = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    margin = max(2, width // 24)
    title_font, reason_font = _font(max(8, width // 20)), _font(max(8, width // 28))
    y = margin
    for text, font, colour in ((title, title_font, _TITLE), (reason, reason_font, _REASON)):
        for line in _wrap(draw, text, font, width - 2 * margin):
            draw.text((margin, y), line, fill=colour, font=font)
            y += _line_height(draw, font)
        y += margin // 2
    draw.rectangle((0, 0, width - 1, height - 1), outline=_REASON)  # a frame around it: visibly not a glitch
    return np.asarray(image, dtype=np.uint8).copy()


class Placeholder:
    """Decides when a placeholder goes out: while the source has produced no frame and has failed (its newest
    error is the reason), one each time the reason changes; never once a frame came."""

    def __init__(self) -> None:
        self._shown: tuple[str, str] | None = None  # (source name, reason) of the last placeholder sent

    def frame(self, source: WaitingSource | None, height: int, width: int, index: int) -> Frame | None:
        """A new placeholder Frame at the stream's size, or None (nothing new to say)."""
        if source is None or source.frames or not source.last_error:
            return None
        shown = (source.name, source.last_error)
        if shown == self._shown:
            return None
        self._shown = shown
        image = placeholder_image(height, width, f"waiting for {source.name}", source.last_error)
        return Frame(image, index, time.perf_counter())


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font
    except TypeError:  # Pillow 10.0: the fixed bitmap font
        return ImageFont.load_default()


def _line_height(draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> int:
    _, top, _, bottom = draw.textbbox((0, 0), "Ag", font=font)
    return int(bottom - top) + 2


def _wrap(
    draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int
) -> list[str]:
    """Greedy word wrap to `width` pixels; a word longer than a line is cut by characters."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if draw.textlength(candidate, font=font) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        while draw.textlength(word, font=font) > width and len(word) > 1:
            cut = len(word) - 1
            while cut > 1 and draw.textlength(word[:cut], font=font) > width:
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        line = word
    if line:
        lines.append(line)
    return lines
