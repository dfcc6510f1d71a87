"""spout: bridge: GPU texture sharing on Windows through SpoutGL 0.1.1 (the `spout` extra).

    spout:NAME?invert=0      sink: a sender called NAME (default: the instance name)
    spout:NAME?invert=0      source: the sender NAME (default: NAME-in); timeout=2 seconds before it counts as gone

SpoutGL needs an OpenGL context current on the calling thread, so the bridge's one worker thread makes every call,
createOpenGL included (open, write/read and close all run there: engine/live/io_threads.py); a call from another
thread is refused. Sender: createOpenGL, setSenderName, then per frame sendImage(rgba, width, height, GL_RGBA,
invert, 0) and setFrameSync. Receiver: createOpenGL, setReceiverName, then receiveImage with no buffer until
isUpdated says the sender's size (and getSenderFormat its format: DXGI 87 is BGRA) is known; the buffer is
allocated at that size and every later receiveImage fills it. SpoutGL 0.1.1 binds getSenderName to
GetSenderWidth, so the sender's name is never read back: we always name the sender we want.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np

from bridges.pixels import bgra_to_rgb, rgb_to_rgba, rgba_to_rgb
from bridges.uri import TIMEOUT_HELP, ParsedUri
from engine.core.errors import DreamwireError
from engine.core.frames import Frame

log = logging.getLogger(__name__)

DXGI_FORMAT_B8G8R8A8_UNORM = 87  # getSenderFormat() of a BGRA sender
FRAME_WAIT_MS = 10  # waitFrameSync timeout between polls of the receiver


def _spoutgl() -> Any:
    import SpoutGL  # lazy: Windows only

    return SpoutGL


class _OneThread:
    """Remembers the thread that opened the bridge and refuses calls from any other (the GL context lives there)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.thread: int | None = None

    def claim(self) -> None:
        self.thread = threading.get_ident()

    def check(self) -> None:
        if self.thread != threading.get_ident():
            raise DreamwireError(f"{self.what}: called from another thread than the one that opened it")


def _with_opengl(thread: _OneThread, make: Any, what: str) -> Any:
    """A new SpoutSender/SpoutReceiver (`make`) with its OpenGL context, created on this thread, which claims it."""
    thread.claim()
    spout_object = make()
    if not spout_object.createOpenGL():
        raise DreamwireError(f"{what}: createOpenGL failed (no OpenGL on this display?)")
    return spout_object


def _release(spout_object: Any, release: str) -> None:
    """releaseSender/releaseReceiver, then the OpenGL context."""
    getattr(spout_object, release)()
    spout_object.closeOpenGL()


class SpoutSink:
    """Sends frames as the Spout sender `sender_name`; invert flips them vertically (sendImage's invert)."""

    def __init__(self, sender_name: str, invert: bool = False) -> None:
        self.sender_name, self.invert = sender_name, invert
        self._sender: Any = None
        self._rgba: np.ndarray | None = None
        self._gl_rgba = 0
        self._thread = _OneThread(f"spout sender {sender_name}")

    @property
    def name(self) -> str:
        return f"spout:{self.sender_name}"

    def open(self) -> None:
        self.close()
        spout = _spoutgl()
        from SpoutGL import enums

        sender = _with_opengl(self._thread, spout.SpoutSender, self._thread.what)
        self._sender = sender  # from here close() releases the context
        sender.setSenderName(self.sender_name)
        self._gl_rgba = enums.GL_RGBA

    def write(self, frame: Frame) -> None:
        self._thread.check()
        if self._sender is None:
            raise DreamwireError(f"spout sender {self.sender_name}: write() before open()")
        height, width = frame.image.shape[:2]
        self._rgba = rgb_to_rgba(frame.image, out=self._rgba)
        if not self._sender.sendImage(self._rgba, width, height, self._gl_rgba, self.invert, 0):
            raise DreamwireError(f"spout sender {self.sender_name}: sendImage failed")
        self._sender.setFrameSync(self.sender_name)  # wakes receivers waiting in waitFrameSync

    def close(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None:
            self._thread.check()
            _release(sender, "releaseSender")


class SpoutSource:
    """Receives the Spout sender `sender_name`; no new frame for `timeout` seconds raises (the worker retries)."""

    def __init__(self, sender_name: str, invert: bool = False, timeout: float = 2.0) -> None:
        self.sender_name, self.invert, self.timeout = sender_name, invert, timeout
        self._receiver: Any = None
        self._buffer: np.ndarray | None = None  # (H, W, 4): allocated once isUpdated() gives the sender's size
        self._bgra = False
        self._enums: Any = None
        self._thread = _OneThread(f"spout receiver {sender_name}")
        self._index = 0

    @property
    def name(self) -> str:
        return f"spout:{self.sender_name}"

    def open(self) -> None:
        self.close()
        spout = _spoutgl()
        from SpoutGL import enums

        receiver = _with_opengl(self._thread, spout.SpoutReceiver, self._thread.what)
        self._receiver, self._enums, self._buffer = receiver, enums, None
        receiver.setReceiverName(self.sender_name)

    def read(self) -> Frame:
        self._thread.check()
        receiver = self._receiver
        if receiver is None:
            raise DreamwireError(f"spout receiver {self.sender_name}: read() before open()")
        deadline = time.perf_counter() + self.timeout
        while True:
            gl_format = self._enums.GL_BGRA_EXT if self._bgra else self._enums.GL_RGBA
            received = receiver.receiveImage(self._buffer, gl_format, self.invert, 0)
            if receiver.isUpdated():  # connected, or the sender changed size/format: (re)allocate, then receive
                self._allocate(receiver)
            elif received and self._buffer is not None and receiver.isFrameNew():
                break
            if time.perf_counter() > deadline:
                raise DreamwireError(f"spout: no frame from sender {self.sender_name!r} for {self.timeout:g} s")
            if not receiver.waitFrameSync(self.sender_name, FRAME_WAIT_MS):
                time.sleep(0.002)  # a sender without frame sync: poll gently
        image = bgra_to_rgb(self._buffer) if self._bgra else rgba_to_rgb(self._buffer)
        frame = Frame(image, self._index, time.perf_counter())
        self._index += 1
        return frame

    def _allocate(self, receiver: Any) -> None:
        width, height = receiver.getSenderWidth(), receiver.getSenderHeight()
        self._bgra = receiver.getSenderFormat() == DXGI_FORMAT_B8G8R8A8_UNORM
        self._buffer = np.zeros((height, width, 4), np.uint8)
        log.info("spout: receiving %r at %dx%d (%s)", self.sender_name, width, height, "BGRA" if self._bgra else "RGBA")

    def close(self) -> None:
        receiver, self._receiver = self._receiver, None
        if receiver is not None:
            self._thread.check()
            _release(receiver, "releaseReceiver")


def source_from_uri(u: ParsedUri, default_name: str) -> SpoutSource:
    u.take({"invert": "0 or 1: flip vertically", "timeout": TIMEOUT_HELP})
    return SpoutSource(u.path or default_name, invert=u.flag("invert"), timeout=u.timeout())


def sink_from_uri(u: ParsedUri, default_name: str) -> SpoutSink:
    u.take({"invert": "0 or 1: flip vertically"})
    return SpoutSink(u.path or default_name, invert=u.flag("invert"))
