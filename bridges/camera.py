"""camera: bridge: a capture device through OpenCV (the `camera` extra: opencv-python-headless).

    camera:0  camera:/dev/video2  camera:?width=1280&height=720&fps=30&backend=auto

The backend is chosen per OS (V4L2 on Linux, Media Foundation on Windows, AVFoundation on macOS; backend=dshow,
any or ffmpeg picks another: ffmpeg also reads a video file, which is how the tests drive this code path).
A grabber thread keeps only the newest frame, so a slow engine never sees a stale one; read() waits for the next.
The grabber runs under the supervisor (engine/core/supervisor.py): if OpenCV raises in it, the death is logged
once per failure streak with its traceback, the grabber is restarted with backoff, and a read() that gets no frame
meanwhile names that cause. When the device stops delivering (unplugged) read() raises, and the worker re-opens
it with backoff until it is back (a camera plugged in after the start is picked up the same way).

A device that does not open is one line saying why, in plain words, which the engine also shows as the reason
for the missing picture: "camera:0: no camera found (devices: none)", "camera:9: could not be opened; found:
/dev/video0". OpenCV's own log (two V4L2 warnings on stderr per failed open) is kept quiet while a device is
opened or probed: its level is set to silent for the probe only and restored after (under a lock, as the level
is process-wide), unless this module logs at debug level, when OpenCV's warnings show too. cv2 is imported only
in open().
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from bridges.pixels import bgr_to_rgb
from bridges.uri import TIMEOUT_HELP, ParsedUri
from engine.core.errors import DreamwireError
from engine.core.frames import Frame
from engine.core.slot import LatestFrameSlot
from engine.core.supervisor import SupervisedThread, Supervisor, default_supervisor

log = logging.getLogger(__name__)

# backend name → OpenCV's CAP_* constant name; "auto" picks per OS.
BACKENDS = {
    "any": "CAP_ANY",
    "v4l2": "CAP_V4L2",
    "msmf": "CAP_MSMF",
    "dshow": "CAP_DSHOW",
    "avfoundation": "CAP_AVFOUNDATION",
    "ffmpeg": "CAP_FFMPEG",
}
_AUTO = {"linux": "v4l2", "win32": "msmf", "darwin": "avfoundation"}
WAIT_S = 0.1  # read() checks for a lost device this often while it waits
PROBED_INDICES = 4  # where devices cannot be listed (Windows, macOS), indices 0..3 are tried to name what exists
_OPENCV_LOG = threading.Lock()  # OpenCV's log level is process-wide: one quiet probe at a time


def _cv2() -> Any:
    import cv2  # lazy: OpenCV is large and optional

    return cv2


def auto_backend(platform: str = sys.platform) -> str:
    return _AUTO.get(platform, "any")


class CameraSource:
    """Frames from capture `device` (an index or a device path), newest first; width/height/fps are requests."""

    def __init__(
        self,
        device: int | str = 0,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        backend: str = "auto",
        timeout: float = 2.0,
        supervisor: Supervisor | None = None,
    ) -> None:
        """`supervisor`: runs the grabber thread (the process-wide one by default)."""
        if backend != "auto" and backend not in BACKENDS:
            raise DreamwireError(f"camera: backend {backend!r} is unknown (allowed: auto, {', '.join(BACKENDS)})")
        self.device, self.width, self.height, self.fps = device, width, height, fps
        self.backend = auto_backend() if backend == "auto" else backend
        self.timeout = timeout  # seconds without a frame before the device counts as lost
        self._supervisor = supervisor
        self._capture: Any = None
        self._frames: LatestFrameSlot[np.ndarray] = LatestFrameSlot()
        self._grabber: SupervisedThread | None = None
        self._lost = False
        self._index = 0

    @property
    def name(self) -> str:
        return f"camera:{self.device}"

    def open(self) -> None:
        self.close()
        cv2 = _cv2()
        api = getattr(cv2, BACKENDS[self.backend])
        with quiet_opencv(cv2):
            capture = cv2.VideoCapture(self.device, api)
            opened = capture.isOpened()  # OpenCV says nothing more: no exception, just not opened
            if not opened:
                capture.release()
                found = list_devices(cv2, api)
        if not opened:
            raise DreamwireError(f"{self.name}: {why_not_opened(self.device, found)}")
        for prop, value in (("WIDTH", self.width), ("HEIGHT", self.height), ("FPS", self.fps)):
            if value:
                capture.set(getattr(cv2, f"CAP_PROP_FRAME_{prop}" if prop != "FPS" else "CAP_PROP_FPS"), value)
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # ask the driver not to queue old frames (not every backend can)
        self._capture = capture
        self._frames, self._lost = LatestFrameSlot(), False
        supervisor = self._supervisor or default_supervisor()
        self._grabber = supervisor.spawn(f"dreamwire-camera-{self.device}", self._grab)
        log.info("%s: open (%s backend)", self.name, self.backend)

    def _grab(self, stop: threading.Event) -> None:
        """The grabber thread: read as fast as the device delivers, keep only the newest (BGR) frame. An exception
        from OpenCV escapes to the supervisor, which logs it and calls this again after a backoff."""
        capture, frames = self._capture, self._frames
        while not stop.is_set():
            ok, image = capture.read()
            if not ok:
                self._lost = True  # read() hands out what is left, then reports the loss
                return
            frames.put(image)

    def read(self) -> Frame:
        if self._capture is None:
            raise DreamwireError(f"{self.name}: read() before open()")
        deadline = time.perf_counter() + self.timeout
        while (image := self._frames.get(timeout=WAIT_S)) is None:
            if self._lost:
                raise DreamwireError(f"{self.name}: stopped delivering frames (unplugged?)")
            if time.perf_counter() > deadline:
                grabber = self._grabber
                if grabber is not None and grabber.failing:  # the real cause, not just the silence it made
                    raise DreamwireError(f"{self.name}: reading frames failed: {grabber.last_error}")
                raise DreamwireError(f"{self.name}: sent no frame for {self.timeout:g} s")
        frame = Frame(bgr_to_rgb(image), self._index, time.perf_counter())
        self._index += 1
        return frame

    def close(self) -> None:
        self._frames.close()
        if self._grabber is not None:
            self._grabber.stop(timeout=2.0)  # capture.read() returns within a frame time, or at once once unplugged
            self._grabber = None
        if self._capture is not None:
            capture, self._capture = self._capture, None
            capture.release()


@contextlib.contextmanager
def quiet_opencv(cv2: Any) -> Iterator[None]:
    """OpenCV's log silent for the block, then back to the level it had (see the module docstring)."""
    levels = getattr(getattr(cv2, "utils", None), "logging", None)
    with _OPENCV_LOG:
        if levels is None or log.isEnabledFor(logging.DEBUG):
            yield
            return
        previous = levels.setLogLevel(levels.LOG_LEVEL_SILENT)  # returns the level it replaces
        try:
            yield
        finally:
            levels.setLogLevel(previous)


def list_devices(cv2: Any, api: int, platform: str = sys.platform) -> list[str]:
    """The capture devices there are: /dev/video* on Linux; elsewhere the indices 0..3 that open (call this under
    quiet_opencv: each index that is not there is a warning from OpenCV)."""
    if platform.startswith("linux"):
        return sorted(glob.glob("/dev/video*"))
    found = []
    for index in range(PROBED_INDICES):
        probe = cv2.VideoCapture(index, api)
        if probe.isOpened():
            found.append(str(index))
        probe.release()
    return found


def why_not_opened(device: int | str, found: list[str], platform: str = sys.platform) -> str:
    """Why `device` did not open, in plain words, from the devices `found` (for the error and the placeholder)."""
    if isinstance(device, str) and not os.path.exists(device):
        return f"{device} does not exist; " + (f"found: {', '.join(found)}" if found else "no camera found")
    if isinstance(device, str) and os.path.isfile(device):  # backend=ffmpeg reads video files too
        return f"{device} is a file OpenCV could not read as video"
    if not found:
        return "no camera found (devices: none)"
    own = f"/dev/video{device}" if isinstance(device, int) and platform.startswith("linux") else str(device)
    if own in found:  # it is there, and still did not open
        return f"could not be opened (in use by another program?); found: {', '.join(found)}"
    return f"could not be opened; found: {', '.join(found)}"


def source_from_uri(u: ParsedUri, _default_name: str) -> CameraSource:
    u.take(
        {
            "width": "requested width",
            "height": "requested height",
            "fps": "requested frame rate",
            "backend": f"auto (per OS), {', '.join(BACKENDS)}",
            "timeout": TIMEOUT_HELP,
        }
    )
    device: int | str = u.path or "0"
    if isinstance(device, str) and device.isdigit():
        device = int(device)
    return CameraSource(
        device,
        width=u.integer("width", 0, 0, 16384) or None,
        height=u.integer("height", 0, 0, 16384) or None,
        fps=u.number("fps", None, 0) or None,
        backend=u.query.get("backend", "auto"),
        timeout=u.timeout(),
    )
