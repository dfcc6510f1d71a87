"""ndi: bridge: NDI® video in and out through cyndilib (the `ndi` extra; its wheels bundle the NDI runtime).

NDI® is a registered trademark of Vizrt NDI AB. dreamwire does not ship the NDI runtime: cyndilib's wheel brings it.

    ndi:NAME?format=rgba|bgra|uyvy&fps=30     sink: a sender called NAME (default: the instance name)
    ndi:NAME?timeout=2&color=rgba|uyvy        source: the sender NAME ("HOST (NAME)" or just NAME) via a Finder

Sink: one cyndilib Sender, its VideoSendFrame sized at the first frame (the sender is re-created when the size
changes); frames go out with write_video_async, so NDI compresses on its own thread. Source: a Finder finds the
sender by name; a Receiver (RGBX_RGBA, or UYVY_RGBA with color=uyvy) with a FrameSync hands over the newest frame,
recognised as new by its timestamp; RGBA/RGBX, BGRA/BGRX and UYVY are converted to RGB. No new frame for `timeout`
seconds raises, and the worker re-opens with backoff (the sender left). Every cyndilib call is made on the
bridge's worker thread; cyndilib is imported only in open().

Measured with cyndilib 0.1.3 on loopback, and why the source works as it does:
- Receiver.receive and Finder.wait_for_sources hold the GIL while they wait (every other Python thread, the
  engine's included, stalls for the whole timeout), and Receiver.receive returned 2 of 240 frames that the
  receiver's own statistics counted as received; FrameSync.capture_video returns at once with the newest frame
  (120 distinct frames of 122 sent). So the source polls capture_video, sleeping between polls.
- The Finder's own thread re-reads the source list only every 5 s once any source exists (our own output is
  one), so the Finder is not opened: update_sources() is polled while looking for the sender.
"""

from __future__ import annotations

import logging
import time
from fractions import Fraction
from typing import Any

import numpy as np

from bridges.pixels import bgra_to_rgb, rgb_to_bgra, rgb_to_rgba, rgb_to_uyvy, rgba_to_rgb, uyvy_to_rgb
from bridges.uri import TIMEOUT_HELP, ParsedUri
from engine.core.errors import DreamwireError
from engine.core.frames import Frame

log = logging.getLogger(__name__)

SEND_FORMATS = ("rgba", "bgra", "uyvy")
RECEIVE_COLORS = ("rgba", "uyvy")
POLL_S = 0.002  # seconds between polls of the frame sync (a sleep that lets the engine's threads run)
DISCOVERY_POLL_S = 0.05  # seconds between looks at the source list while the sender is not found


def _cyndilib() -> Any:
    import cyndilib  # lazy: the NDI runtime loads with it

    return cyndilib


def matching_source(names: list[str], wanted: str) -> str | None:
    """The NDI source called `wanted`: its full name "HOST (STREAM)", or any host's STREAM == wanted."""
    if wanted in names:
        return wanted
    return next((name for name in sorted(names) if name.endswith(f" ({wanted})")), None)


class NdiSink:
    """Sends frames as the NDI source `sender_name` (pixel format `fmt`: rgba, bgra or uyvy)."""

    def __init__(self, sender_name: str, fmt: str = "rgba", fps: float = 30.0) -> None:
        if fmt not in SEND_FORMATS:
            raise DreamwireError(f"ndi: format {fmt!r} is unknown (allowed: {', '.join(SEND_FORMATS)})")
        self.sender_name, self.fmt, self.fps = sender_name, fmt, fps
        self._sender: Any = None
        self._size: tuple[int, int] | None = None  # (height, width) the sender was made for
        self._buffer: np.ndarray | None = None  # converted pixels, reused frame to frame

    @property
    def name(self) -> str:
        return f"ndi:{self.sender_name}"

    def open(self) -> None:
        self.close()
        _cyndilib()  # a missing or broken runtime fails here, on open, not at the first frame

    def write(self, frame: Frame) -> None:
        image = frame.image
        size = (image.shape[0], image.shape[1])
        if size != self._size:
            self._start_sender(size)
        self._sender.write_video_async(self._convert(image).reshape(-1))

    def _convert(self, rgb: np.ndarray) -> np.ndarray:
        if self.fmt == "rgba":
            self._buffer = rgb_to_rgba(rgb, out=self._buffer)
        elif self.fmt == "bgra":
            self._buffer = rgb_to_bgra(rgb, out=self._buffer)
        else:
            self._buffer = rgb_to_uyvy(rgb)
        return self._buffer

    def _start_sender(self, size: tuple[int, int]) -> None:
        self.close()
        ndi = _cyndilib()
        if self.fmt == "uyvy" and size[1] % 2:
            raise DreamwireError(f"ndi {self.sender_name}: UYVY needs an even width, frames are {size[1]} wide")
        video = ndi.VideoSendFrame()
        video.set_resolution(size[1], size[0])
        video.set_frame_rate(Fraction(self.fps).limit_denominator(1001))
        video.set_fourcc(getattr(ndi.FourCC, self.fmt.upper()))
        sender = ndi.Sender(self.sender_name, clock_video=False)  # the engine paces frames, not NDI
        sender.set_video_frame(video)
        sender.open()
        self._sender, self._size = sender, size
        log.info("ndi: sending %r at %dx%d (%s)", self.sender_name, size[1], size[0], self.fmt)

    def close(self) -> None:
        sender, self._sender, self._size = self._sender, None, None
        if sender is not None:
            sender.close()


class NdiSource:
    """Receives the NDI source `source_name`; no frame for `timeout` seconds raises (the worker retries)."""

    def __init__(self, source_name: str, timeout: float = 2.0, color: str = "rgba") -> None:
        if color not in RECEIVE_COLORS:
            raise DreamwireError(f"ndi: color {color!r} is unknown (allowed: {', '.join(RECEIVE_COLORS)})")
        self.source_name, self.timeout, self.color = source_name, timeout, color
        self._finder: Any = None
        self._receiver: Any = None
        self._video: Any = None
        self._stamp = 0.0  # NDI timestamp of the frame last handed out
        self._index = 0

    @property
    def name(self) -> str:
        return f"ndi:{self.source_name}"

    def open(self) -> None:
        self.close()
        ndi = _cyndilib()
        from cyndilib.wrapper.ndi_recv import RecvBandwidth, RecvColorFormat

        self._finder = ndi.Finder()  # not open(): its thread would refresh the list only every 5 s (see above)
        found = self._find()
        color = RecvColorFormat.RGBX_RGBA if self.color == "rgba" else RecvColorFormat.UYVY_RGBA
        self._receiver = ndi.Receiver(color_format=color, bandwidth=RecvBandwidth.highest, recv_name="dreamwire")
        self._video = ndi.VideoFrameSync()
        self._receiver.frame_sync.set_video_frame(self._video)
        self._receiver.set_source(self._finder.get_source(found))
        log.info("ndi: receiving %r", found)

    def _find(self) -> str:
        """Wait up to `timeout` seconds for the sender to be announced; its full name."""
        deadline = time.perf_counter() + self.timeout
        while True:
            names = self._finder.update_sources()
            found = matching_source(names, self.source_name)
            if found is not None:
                return found
            left = deadline - time.perf_counter()
            if left <= 0:
                seen = ", ".join(sorted(names)) or "none"
                raise DreamwireError(
                    f"ndi: no source named {self.source_name!r} found in {self.timeout:g} s (found: {seen})"
                )
            time.sleep(min(left, DISCOVERY_POLL_S))

    def read(self) -> Frame:
        if self._receiver is None:
            raise DreamwireError(f"ndi source {self.source_name}: read() before open()")
        deadline, sync, video = time.perf_counter() + self.timeout, self._receiver.frame_sync, self._video
        while True:
            sync.capture_video()  # the newest frame (or the same one again), at once
            if video.xres and video.get_timestamp_posix() != self._stamp:
                break
            if time.perf_counter() > deadline:
                raise DreamwireError(f"ndi: no frame from {self.source_name!r} for {self.timeout:g} s (sender gone?)")
            time.sleep(POLL_S)
        self._stamp = video.get_timestamp_posix()
        frame = Frame(self._pixels(), self._index, time.perf_counter())
        self._index += 1
        return frame

    def _pixels(self) -> np.ndarray:
        """The received frame as (H, W, 3) uint8 RGB."""
        ndi, video = _cyndilib(), self._video
        width, height, stride = video.xres, video.yres, video.get_line_stride()
        rows = video.get_array()[: height * stride].reshape(height, stride)  # a copy
        fourcc = video.get_fourcc()
        if fourcc in (ndi.FourCC.RGBA, ndi.FourCC.RGBX):
            return rgba_to_rgb(rows[:, : 4 * width].reshape(height, width, 4))
        if fourcc in (ndi.FourCC.BGRA, ndi.FourCC.BGRX):
            return bgra_to_rgb(rows[:, : 4 * width].reshape(height, width, 4))
        if fourcc == ndi.FourCC.UYVY:
            return uyvy_to_rgb(rows[:, : 2 * width], width, height)
        raise DreamwireError(f"ndi: pixel format {fourcc!r} from {self.source_name!r} is not handled (RGBA/BGRA/UYVY)")

    def close(self) -> None:
        receiver = self._receiver
        self._receiver = self._finder = self._video = None  # the Finder, never opened, is freed with its object
        if receiver is not None:
            receiver.disconnect()


def source_from_uri(u: ParsedUri, default_name: str) -> NdiSource:
    u.take({"timeout": TIMEOUT_HELP, "color": "rgba or uyvy"})
    return NdiSource(u.path or default_name, timeout=u.timeout(), color=u.query.get("color", "rgba"))


def sink_from_uri(u: ParsedUri, default_name: str) -> NdiSink:
    u.take({"format": "rgba (default), bgra or uyvy", "fps": "frame rate announced to receivers, default 30"})
    fps = u.number("fps", 30.0, 1.0) or 30.0
    return NdiSink(u.path or default_name, fmt=u.query.get("format", "rgba"), fps=fps)
