"""syphon: bridge: GPU texture sharing on macOS through syphon-python's Metal classes (the `syphon` extra).

    syphon:NAME?invert=0      sink: a SyphonMetalServer called NAME (default: the instance name)
    syphon:NAME?invert=0      source: the server NAME (default: NAME-in); timeout=2 seconds before it counts as gone

Sink: a SyphonMetalServer; an RGBA8 MTLTexture (syphon.utils.raw.create_mtl_texture on the server's device) is
re-created whenever the frame size changes, filled with syphon.utils.numpy.copy_image_to_mtl_texture and published
with is_flipped=True, because our rows run top to bottom. Source: a SyphonServerDirectory finds the server by name
(or app name); discovery arrives as run-loop notifications, so the bridge's thread pumps its run loop
(update_run_loop) while it looks and while it waits for frames; a SyphonMetalClient then delivers textures that
copy_mtl_texture_to_image reads back (BGRA or RGBA, by the texture's pixel format). syphon (and PyObjC's Metal) are
imported only in open(), on the bridge's worker thread, which makes every call.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from bridges.pixels import bgra_to_rgb, flip_vertical, rgb_to_rgba, rgba_to_rgb
from bridges.uri import TIMEOUT_HELP, ParsedUri
from engine.core.errors import DreamwireError
from engine.core.frames import Frame

log = logging.getLogger(__name__)

RUN_LOOP_S = 0.005  # one pump of the run loop while waiting: discovery and frame notifications arrive there


def _syphon() -> Any:
    import syphon  # lazy: macOS only (PyObjC, Metal)

    return syphon


class SyphonSink:
    """Publishes frames as the Syphon server `server_name`; invert flips them vertically."""

    def __init__(self, server_name: str, invert: bool = False) -> None:
        self.server_name, self.invert = server_name, invert
        self._server: Any = None
        self._texture: Any = None
        self._size: tuple[int, int] | None = None  # (height, width) of the texture
        self._rgba: np.ndarray | None = None
        self._create_texture: Any = None  # syphon.utils.raw.create_mtl_texture, bound in open()
        self._copy_to_texture: Any = None  # syphon.utils.numpy.copy_image_to_mtl_texture

    @property
    def name(self) -> str:
        return f"syphon:{self.server_name}"

    def open(self) -> None:
        self.close()
        syphon = _syphon()
        from syphon.utils.numpy import copy_image_to_mtl_texture
        from syphon.utils.raw import create_mtl_texture

        self._create_texture, self._copy_to_texture = create_mtl_texture, copy_image_to_mtl_texture
        self._server = syphon.SyphonMetalServer(self.server_name)

    def write(self, frame: Frame) -> None:
        if self._server is None:
            raise DreamwireError(f"syphon server {self.server_name}: write() before open()")
        height, width = frame.image.shape[:2]
        if self._size != (height, width):  # a new size: a new texture
            self._texture = self._create_texture(self._server.device, width, height)
            self._size = (height, width)
            log.info("syphon: publishing %r at %dx%d", self.server_name, width, height)
        image = flip_vertical(frame.image) if self.invert else frame.image
        self._rgba = rgb_to_rgba(image, out=self._rgba)
        self._copy_to_texture(self._rgba, self._texture)
        self._server.publish_frame_texture(self._texture, is_flipped=True)  # rows run top to bottom

    def close(self) -> None:
        server, self._server, self._texture, self._size = self._server, None, None, None
        if server is not None:
            server.stop()


class SyphonSource:
    """Receives the Syphon server `server_name`; no new frame for `timeout` seconds raises (the worker retries)."""

    def __init__(self, server_name: str, invert: bool = False, timeout: float = 2.0) -> None:
        self.server_name, self.invert, self.timeout = server_name, invert, timeout
        self._directory: Any = None
        self._client: Any = None
        self._copy_to_image: Any = None  # syphon.utils.numpy.copy_mtl_texture_to_image, bound in open()
        self._bgra_format: Any = None  # Metal.MTLPixelFormatBGRA8Unorm
        self._index = 0

    @property
    def name(self) -> str:
        return f"syphon:{self.server_name}"

    def open(self) -> None:
        self.close()
        syphon = _syphon()
        import Metal  # PyObjC's Metal framework, a dependency of syphon-python
        from syphon.utils.numpy import copy_mtl_texture_to_image

        self._copy_to_image, self._bgra_format = copy_mtl_texture_to_image, Metal.MTLPixelFormatBGRA8Unorm
        directory = syphon.SyphonServerDirectory()
        directory.run_loop_interval = RUN_LOOP_S  # `servers` pumps the run loop this long on each look
        self._directory = directory
        deadline = time.perf_counter() + self.timeout
        while not (found := self._matching()):
            if time.perf_counter() > deadline:
                seen = ", ".join(sorted(f"{s.app_name}: {s.name}" for s in directory.servers)) or "none"
                raise DreamwireError(f"syphon: no server named {self.server_name!r} (found: {seen})")
        self._client = syphon.SyphonMetalClient(found[0])
        log.info("syphon: receiving %r from %s", self.server_name, found[0].app_name)

    def _matching(self) -> list[Any]:
        by_name = self._directory.servers_matching_name(name=self.server_name)
        return by_name or self._directory.servers_matching_name(app_name=self.server_name)

    def read(self) -> Frame:
        client = self._client
        if client is None:
            raise DreamwireError(f"syphon client {self.server_name}: read() before open()")
        deadline = time.perf_counter() + self.timeout
        while not client.has_new_frame:
            if not client.is_valid:
                raise DreamwireError(f"syphon: server {self.server_name!r} closed")
            if time.perf_counter() > deadline:
                raise DreamwireError(f"syphon: no frame from server {self.server_name!r} for {self.timeout:g} s")
            self._directory.update_run_loop()
        texture = client.new_frame_image
        pixels = self._copy_to_image(texture)  # (H, W, 4), BGRA or RGBA by the texture's pixel format
        image = bgra_to_rgb(pixels) if texture.pixelFormat() == self._bgra_format else rgba_to_rgb(pixels)
        if self.invert:
            image = np.ascontiguousarray(flip_vertical(image))
        frame = Frame(image, self._index, time.perf_counter())
        self._index += 1
        return frame

    def close(self) -> None:
        client, self._client, self._directory = self._client, None, None
        if client is not None:
            client.stop()


def source_from_uri(u: ParsedUri, default_name: str) -> SyphonSource:
    u.take({"invert": "0 or 1: flip vertically", "timeout": TIMEOUT_HELP})
    return SyphonSource(u.path or default_name, invert=u.flag("invert"), timeout=u.timeout())


def sink_from_uri(u: ParsedUri, default_name: str) -> SyphonSink:
    u.take({"invert": "0 or 1: flip vertically"})
    return SyphonSink(u.path or default_name, invert=u.flag("invert"))
