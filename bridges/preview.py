"""preview: sink: the output as an MJPEG stream, and the control page, for any browser at http://127.0.0.1:PORT/.

Routes: `/` the control page (bridges/control_page.html: the picture, the status line and every live parameter
as a control), `/stream.mjpg` multipart/x-mixed-replace JPEGs, `/frame.jpg` the latest frame, `/status` the
status text, `/control.json` where the page's controls are (the OSCQuery port of this instance, or null with OSC
off: bridges/page_access.py).

Served by aiohttp on a thread of its own (bridges/web.py). write() only stores a reference to the newest frame
(frames are not mutated after hand-over) and, while a stream is open, wakes the server's loop; the JPEG is
encoded there lazily, once per new frame, and shared by every client. A slow browser skips frames (each client
always gets the newest) and never blocks write() or other clients.

There is no local window: on a machine with a display, open the URL in a browser.
"""

from __future__ import annotations

import asyncio
import html
import io
import logging
from importlib import resources

import numpy as np
from aiohttp import web
from PIL import Image

from bridges.base import BridgeUnavailable
from bridges.page_access import links
from bridges.pixels import FrameConformer
from bridges.web import WebServer, http_url
from engine.core.errors import DreamwireError
from engine.core.frames import Frame
from engine.core.slot import LatestFrameSlot

log = logging.getLogger(__name__)

_BOUNDARY = "dreamwireframe"
_WAIT_FOR_FRAME = 0.5  # seconds a stream waits for a new frame before it looks whether the sink closed


def control_page(title: str) -> bytes:
    """The page, with the instance name in its title (the one substitution; the rest is the static file)."""
    text = resources.files("bridges").joinpath("control_page.html").read_text(encoding="utf-8")
    return text.replace("__TITLE__", html.escape(title)).encode()


class PreviewSink:
    """MJPEG-over-HTTP preview and control page on host:port (port 0 picks a free port; .port / .url after open())."""

    def __init__(
        self,
        port: int = 8765,
        host: str = "127.0.0.1",
        quality: int = 80,
        window: bool = False,
        name: str = "preview",
        title: str = "dreamwire",
    ) -> None:
        if window:
            raise BridgeUnavailable(
                "preview: window=1 is not built yet; use window=0 and open the preview URL in a browser"
            )
        if not 0 <= port <= 65535:
            raise DreamwireError(f"preview port={port} is invalid: use 0..65535 (0 = any free port)")
        if not 1 <= quality <= 95:
            raise DreamwireError(f"preview quality={quality} is invalid: use 1..95")
        self.host, self.quality = host, quality
        self._requested_port = port
        self._name = name
        self.title = title  # the instance name: the page's title, and the key of its controls (page_access.py)
        self.page = control_page(title)
        self._conform = FrameConformer(f"preview {name}")  # checked here: the encoder runs on the server's loop
        # The newest (H, W, 3) uint8 RGB frame; each client keeps its own sequence mark. A new slot per open().
        self._frames: LatestFrameSlot[np.ndarray] = LatestFrameSlot()
        self._frames.close()
        self._jpeg = b""
        self._jpeg_seq = 0
        self._status = ""
        self._streams = 0  # open /stream.mjpg responses (read from write()'s thread: an int, no lock needed)
        self._new_frame: asyncio.Event | None = None  # set on the loop when a frame arrives; replaced each time
        self._server: WebServer | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def port(self) -> int:
        """The bound port (the requested one until open())."""
        return self._server.port if self._server is not None else self._requested_port

    @property
    def url(self) -> str:
        return http_url(self.host, self.port)

    @property
    def page_url(self) -> str:
        """The control page's URL, with the token when its controls need one (a non-loopback OSCQuery bind)."""
        link = links().controls(self.title)
        return self.url + (f"?token={link.token}" if link is not None and link.token else "")

    def set_status(self, text: str) -> None:
        """Status line shown under the stream (fps, latency, ...); any thread may call it."""
        self._status = text

    def open(self) -> None:
        if self._server is not None:
            return
        self._frames = LatestFrameSlot()
        self._jpeg, self._jpeg_seq = b"", 0
        server = WebServer(
            self._app,
            self.host,
            self._requested_port,
            f"dreamwire-{self._name}-http",
            "preview",
            "pick another with preview:?port=N",
        )
        server.start()
        self._server = server
        links().add_page(self.title, self, server.port)
        log.info("control page: open %s in a browser", self.page_url)

    def write(self, frame: Frame) -> None:
        image = self._conform(frame.image)  # (H, W, 3) uint8 RGB, or None: not convertible (logged once per streak)
        if image is not None:
            self._frames.put(image)
            if self._streams and self._server is not None:
                self._server.call_soon(self._wake)

    def close(self) -> None:
        """Stop serving: ends the streams, stops the server and releases the port (within ~0.5 s)."""
        self._frames.close()
        links().remove_page(self.title, self)
        server, self._server = self._server, None
        if server is not None:
            server.call_soon(self._wake)
            server.close()

    # ---- on the server's loop ------------------------------------------------------------------------------

    def _app(self) -> web.Application:
        self._new_frame = None
        app = web.Application()
        app.router.add_get("/", self._page)
        app.router.add_get("/index.html", self._page)
        app.router.add_get("/status", self._status_text)
        app.router.add_get("/frame.jpg", self._frame)
        app.router.add_get("/stream.mjpg", self._stream)
        app.router.add_get("/control.json", self._control)
        return app

    def _wake(self) -> None:
        if self._new_frame is not None:
            self._new_frame.set()
            self._new_frame = None

    def _latest_jpeg(self) -> tuple[int, bytes] | None:
        """(sequence number, JPEG bytes) of the newest frame, encoding it if no client has yet; None before any."""
        seq, image = self._frames.latest()
        if image is None:
            return None
        if seq != self._jpeg_seq:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="JPEG", quality=self.quality)
            self._jpeg, self._jpeg_seq = buffer.getvalue(), seq
        return self._jpeg_seq, self._jpeg

    async def _page(self, request: web.Request) -> web.Response:
        return web.Response(body=self.page, content_type="text/html", charset="utf-8", headers=_NO_STORE)

    async def _status_text(self, request: web.Request) -> web.Response:
        return web.Response(text=self._status, content_type="text/plain", charset="utf-8", headers=_NO_STORE)

    async def _control(self, request: web.Request) -> web.Response:
        link = links().controls(self.title)
        return web.json_response({"oscquery_port": link.port if link else None}, headers=_NO_STORE)

    async def _frame(self, request: web.Request) -> web.Response:
        latest = self._latest_jpeg()
        if latest is None:
            return web.Response(status=503, text="no frame yet\n", headers=_NO_STORE)
        return web.Response(body=latest[1], content_type="image/jpeg", headers=_NO_STORE)

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": f"multipart/x-mixed-replace; boundary={_BOUNDARY}", **_NO_STORE}
        )
        await response.prepare(request)
        self._streams += 1
        try:
            seen = 0
            while not self._frames.closed:
                if self._new_frame is None:
                    self._new_frame = asyncio.Event()
                arrived = self._new_frame  # taken before looking: a frame that lands meanwhile sets it
                latest = self._latest_jpeg()
                if latest is None or latest[0] == seen:
                    try:
                        await asyncio.wait_for(arrived.wait(), _WAIT_FOR_FRAME)
                    except TimeoutError:
                        pass
                    continue
                seen, jpeg = latest
                head = f"--{_BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
                await response.write(head + jpeg + b"\r\n")  # waits for a slow client; the others go on
        except (ConnectionError, asyncio.CancelledError) as error:  # a tab closed, or the server stopping
            log.debug("preview: stream to %s ended (%s)", request.remote, type(error).__name__)
            if isinstance(error, asyncio.CancelledError):
                raise
        finally:
            self._streams -= 1
        return response


_NO_STORE = {"Cache-Control": "no-store"}
