"""camera: bridge: a capture device through OpenCV (the `camera` extra: opencv-python-headless).

    camera:0  camera:/dev/video2  camera:?width=1280&height=720&fps=30&backend=auto

The backend is chosen per OS (V4L2 on Linux, Media Foundation on Windows, AVFoundation on macOS; backend=dshow,
any or ffmpeg picks another: ffmpeg also reads a video file, which is how the tests drive this code path).
A grabber thread keeps only the newest frame, so a slow engine never sees a stale one; read() waits for the next.
When the device stops delivering (unplugged) read() raises, and the worker re-opens it with backoff until it is
back. A device that does not open is one line naming the devices that were found. cv2 is imported only in open().
"""

from __future__ import annotations

import glob
import logging
import sys
import threading
import time
from typing import Any

import numpy as np

from bridges.pixels import bgr_to_rgb
from bridges.uri import TIMEOUT_HELP, ParsedUri
from engine.core.errors import DreamwireError
from engine.core.frames import Frame
from engine.core.slot import LatestFrameSlot

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
    ) -> None:
        if backend != "auto" and backend not in BACKENDS:
            raise DreamwireError(f"camera: backend {backend!r} is unknown (allowed: auto, {', '.join(BACKENDS)})")
        self.device, self.width, self.height, self.fps = device, width, height, fps
        self.backend = auto_backend() if backend == "auto" else backend
        self.timeout = timeout  # seconds without a frame before the device counts as lost
        self._capture: Any = None
        self._frames: LatestFrameSlot[np.ndarray] = LatestFrameSlot()
        self._grabber: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lost = False
        self._index = 0

    @property
    def name(self) -> str:
        return f"camera:{self.device}"

    def open(self) -> None:
        self.close()
        cv2 = _cv2()
        api = getattr(cv2, BACKENDS[self.backend])
        capture = cv2.VideoCapture(self.device, api)
        if not capture.isOpened():  # OpenCV says nothing more: no exception, just not opened
            capture.release()
            raise DreamwireError(f"camera {self.device} could not be opened; {describe_devices(cv2, api)}")
        for prop, value in (("WIDTH", self.width), ("HEIGHT", self.height), ("FPS", self.fps)):
            if value:
                capture.set(getattr(cv2, f"CAP_PROP_FRAME_{prop}" if prop != "FPS" else "CAP_PROP_FPS"), value)
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # ask the driver not to queue old frames (not every backend can)
        self._capture = capture
        self._frames, self._lost = LatestFrameSlot(), False
        self._stopping.clear()
        self._grabber = threading.Thread(target=self._grab, name=f"dreamwire-camera-{self.device}", daemon=True)
        self._grabber.start()
        log.info("camera %s: open (%s backend)", self.device, self.backend)

    def _grab(self) -> None:
        """The grabber thread: read as fast as the device delivers, keep only the newest (BGR) frame."""
        capture = self._capture
        while not self._stopping.is_set():
            ok, image = capture.read()
            if not ok:
                self._lost = True  # read() hands out what is left, then reports the loss
                return
            self._frames.put(image)

    def read(self) -> Frame:
        if self._capture is None:
            raise DreamwireError(f"camera {self.device}: read() before open()")
        deadline = time.perf_counter() + self.timeout
        while (image := self._frames.get(timeout=WAIT_S)) is None:
            if self._lost:
                raise DreamwireError(f"camera {self.device}: stopped delivering frames (unplugged?)")
            if time.perf_counter() > deadline:
                raise DreamwireError(f"camera {self.device}: sent no frame for {self.timeout:g} s")
        frame = Frame(bgr_to_rgb(image), self._index, time.perf_counter())
        self._index += 1
        return frame

    def close(self) -> None:
        self._stopping.set()
        self._frames.close()
        if self._grabber is not None:
            self._grabber.join(timeout=2.0)  # read() returns within a frame time, or at once once unplugged
            self._grabber = None
        if self._capture is not None:
            capture, self._capture = self._capture, None
            capture.release()


def describe_devices(cv2: Any, api: int) -> str:
    """'found: /dev/video0, /dev/video2' or 'found no camera devices' (for the could-not-open error)."""
    if sys.platform.startswith("linux"):
        found = sorted(glob.glob("/dev/video*"))
    else:
        found = []
        for index in range(PROBED_INDICES):
            probe = cv2.VideoCapture(index, api)
            if probe.isOpened():
                found.append(str(index))
            probe.release()
    return f"found: {', '.join(found)}" if found else "found no camera devices"


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
