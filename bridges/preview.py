"""preview: sink: the output as an MJPEG stream for any browser at http://127.0.0.1:PORT/.

Routes: `/` a tiny page (the stream + the live status text), `/stream.mjpg` multipart/x-mixed-replace JPEGs,
`/frame.jpg` the latest frame, `/status` the status text. write() only stores a reference to the newest frame
(frames are not mutated after hand-over); the JPEG is encoded lazily, once per new frame, by whichever client
thread asks first, and shared. Each client has its own thread and always gets the newest frame, so a slow
browser skips frames and never blocks write() or other clients.

There is no local window: on a machine with a display, open the URL in a browser.
"""

from __future__ import annotations

import errno
import html
import io
import logging
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from PIL import Image

from bridges.base import BridgeUnavailable
from bridges.pixels import FrameConformer
from engine.core.errors import DreamwireError
from engine.core.frames import Frame
from engine.core.slot import LatestFrameSlot

log = logging.getLogger(__name__)

_BOUNDARY = "dreamwireframe"
_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title} preview</title>
<style>body{margin:0;background:#111;color:#888;font:12px monospace}
img{display:block;margin:0 auto;max-width:100vw;max-height:calc(100vh - 24px)}#s{padding:4px}</style></head>
<body><img src="/stream.mjpg" alt="{title} preview"><div id="s"></div>
<script>setInterval(() => fetch("/status").then(r => r.text())
  .then(t => { document.getElementById("s").textContent = t; }).catch(() => {}), 500);</script>
</body></html>
"""


class PreviewSink:
    """MJPEG-over-HTTP preview on host:port (port 0 picks a free port; see .port / .url after open())."""

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
        self.page = _PAGE.replace("{title}", html.escape(title)).encode()  # the instance name in the tab's title
        self._conform = FrameConformer(f"preview {name}")  # checked here: the JPEG encoder runs on client threads
        # The newest (H, W, 3) uint8 RGB frame; each client keeps its own sequence mark. A new slot per open().
        self._frames: LatestFrameSlot[np.ndarray] = LatestFrameSlot()
        self._frames.close()
        self._encode_lock = threading.Lock()  # one encoder at a time; the result is shared by all clients
        self._jpeg = b""
        self._jpeg_seq = 0
        self._status = ""
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def port(self) -> int:
        """The bound port (the requested one until open())."""
        return self._server.server_address[1] if self._server is not None else self._requested_port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def set_status(self, text: str) -> None:
        """Status line shown under the stream (fps, latency, ...); any thread may call it."""
        self._status = text

    def open(self) -> None:
        if self._server is not None:
            return
        try:
            server = _Server((self.host, self._requested_port), _Handler)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise DreamwireError(
                    f"preview port {self._requested_port} on {self.host} is in use: pick another with preview:?port=N"
                ) from e
            raise DreamwireError(f"preview cannot listen on {self.host}:{self._requested_port} ({e})") from e
        server.sink = self
        self._frames = LatestFrameSlot()
        self._jpeg, self._jpeg_seq = b"", 0
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name=f"dreamwire-{self._name}-http", daemon=True
        )
        self._thread.start()
        log.info("preview: open %s in a browser", self.url)

    def write(self, frame: Frame) -> None:
        image = self._conform(frame.image)  # (H, W, 3) uint8 RGB, or None: not convertible (logged once per streak)
        if image is not None:
            self._frames.put(image)

    def close(self) -> None:
        """Stop serving: wakes streaming clients, stops the accept loop and releases the port (within ~0.2 s)."""
        self._frames.close()
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()  # returns once serve_forever has left its poll loop
            server.server_close()
        if thread is not None:
            thread.join(timeout=1.0)

    # -------------------------------------------------------------- used by the handler threads

    def _latest_jpeg(self) -> tuple[int, bytes] | None:
        """(sequence number, JPEG bytes) of the newest frame, encoding it if no client has yet; None before any."""
        with self._encode_lock:
            seq, image = self._frames.latest()
            if image is None:
                return None
            if seq != self._jpeg_seq:
                buffer = io.BytesIO()
                Image.fromarray(image).save(buffer, format="JPEG", quality=self.quality)
                self._jpeg, self._jpeg_seq = buffer.getvalue(), seq
            return self._jpeg_seq, self._jpeg

    def _next_jpeg(self, after: int, timeout: float) -> tuple[int, bytes] | None:
        """Wait up to `timeout` s for a frame newer than sequence number `after`; None on timeout or close."""
        if self._frames.wait_newer(after, timeout) is None:
            return None
        return self._latest_jpeg()

    @property
    def _is_closed(self) -> bool:
        return self._frames.closed


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # client threads never keep the process alive
    # SO_REUSEADDR lets a quick restart rebind a port in TIME_WAIT; on Windows it would also let a second server
    # bind a port that is in use, silently, instead of failing with "in use".
    allow_reuse_address = sys.platform != "win32"
    sink: PreviewSink


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10.0  # seconds: a client that stops reading for this long is dropped (frees its thread)
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        sink = self.server.sink
        try:
            if path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, "text/html; charset=utf-8", sink.page)
            elif path == "/status":
                self._send(HTTPStatus.OK, "text/plain; charset=utf-8", sink._status.encode())
            elif path == "/frame.jpg":
                latest = sink._latest_jpeg()
                if latest is None:
                    self._send(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", b"no frame yet\n")
                else:
                    self._send(HTTPStatus.OK, "image/jpeg", latest[1])
            elif path == "/stream.mjpg":
                self._stream(sink)
            else:
                self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found: try / /stream.mjpg /frame.jpg\n")
        except OSError as e:  # client went away or stopped reading: normal for a browser tab
            log.debug("preview: client %s dropped (%s)", self.client_address[0], e)

    def _send(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _stream(self, sink: PreviewSink) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={_BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        seen = 0
        latest = sink._latest_jpeg()  # show the current frame at once, not only the next one
        while not sink._is_closed:
            if latest is None:
                latest = sink._next_jpeg(seen, timeout=0.5)
                continue
            seen, jpeg = latest
            head = f"--{_BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
            self.wfile.write(head + jpeg + b"\r\n")
            latest = None

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("preview: %s %s", self.client_address[0], format % args)
