"""One HTTP/WebSocket server library for the preview page and OSCQuery: an aiohttp application served on
host:port from an asyncio loop of its own, on a supervised thread (engine/core/supervisor.py), so no request
ever runs on the engine's thread or waits for it.

    server = WebServer(make_app, "127.0.0.1", 8765, "dreamwire-preview-http", "preview", "pick another port")
    server.start()                 # binds now: a port in use is one DreamwireError naming it
    server.call_soon(fn, *args)    # from any thread: run fn on the server's loop (never blocks the caller)
    server.close()                 # stops within ~0.5 s, also with a client that stopped reading

Why aiohttp (over starlette + uvicorn): one package that is both the HTTP server and the WebSocket server,
with a plain `AppRunner`/`TCPSite` API to run on a loop we own on our own thread and stop on demand; uvicorn
wants to own the process (signal handlers, its own loop policy, `Server.should_exit` polled every 0.1 s) and
starlette adds an ASGI layer we would not use.

`make_app` is called for every (re)start: an aiohttp Application cannot be served again once cleaned up. If the
loop dies after the first start, the supervisor logs it and serves again on the same port.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

from aiohttp import web

from engine.core.errors import DreamwireError
from engine.core.supervisor import SupervisedThread, spawn

log = logging.getLogger(__name__)

# SO_REUSEADDR lets a quick restart rebind a port in TIME_WAIT; on Windows it would also let a second server bind
# a port that is in use, silently, instead of failing with "in use".
REUSE_ADDRESS = sys.platform != "win32"
SHUTDOWN_TIMEOUT = 0.3  # seconds a request still running at close (a stream, a WebSocket) gets before it is cut


class WebServer:
    """An aiohttp app on host:port; `port` is the bound port after start() (useful with port 0)."""

    def __init__(
        self, make_app: Callable[[], web.Application], host: str, port: int, name: str, what: str, hint: str
    ) -> None:
        self.host, self.port = host, port
        self.name, self.what = name, what  # thread name; what the errors call it ("preview", "OSCQuery")
        self.hint = hint  # how to pick another port, for the one-line error
        self._make_app = make_app
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: SupervisedThread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._started = False  # a bind failure after the first start is a death (restarted), not a start error

    @property
    def running(self) -> bool:
        return self._loop is not None

    def start(self) -> None:
        self._ready.clear()
        self._thread = spawn(self.name, self._serve)
        self._ready.wait()
        if self._error is not None:
            self._thread.stop()
            self._thread = None
            error, self._error = self._error, None
            raise error
        self._started = True

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> bool:
        """Run callback(*args) on the server's loop; False when the server is not running."""
        loop = self._loop
        if loop is None:
            return False
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop closed between the check and the call
            return False
        return True

    def close(self) -> None:
        """Stop serving and release the port; safe to call twice."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        stop = self._stop
        if stop is not None:
            self.call_soon(stop.set)
        if not thread.stop(timeout=2.0):
            log.warning("%s: the server thread did not stop within 2 s (abandoned)", self.what)

    # ---- the server thread ---------------------------------------------------------------------------------

    def _serve(self, stopping: threading.Event) -> None:
        try:
            asyncio.run(self._main(stopping))
        except Exception as error:
            if self._started:
                raise  # a death after the start: the supervisor logs it and serves again with backoff
            self._error = error  # start() raises it: a server that never started is not restarted
        finally:
            self._ready.set()

    async def _main(self, stopping: threading.Event) -> None:
        runner = web.AppRunner(self._make_app(), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, reuse_address=REUSE_ADDRESS)
            try:
                await site.start()
            except OSError as error:
                where, reason = f"{self.host}:{self.port}", error.strerror or error
                raise DreamwireError(f"{self.what}: cannot listen on TCP {where} ({reason}); {self.hint}") from None
            self.port = runner.addresses[0][1]  # the bound port (port 0 picks one); a restart binds this one again
            self._stop = asyncio.Event()
            self._loop = asyncio.get_running_loop()
            self._ready.set()
            if not stopping.is_set():
                await self._stop.wait()
        finally:
            self._loop = None
            await runner.cleanup()


def http_url(host: str, port: int) -> str:
    """The URL a browser opens for a server bound to host:port: every interface (0.0.0.0, ::) is this machine's
    name; an IPv6 address is bracketed."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"http://{host}:{port}/"
    if address.is_unspecified:
        return f"http://{socket.gethostname()}:{port}/"
    return f"http://[{host}]:{port}/" if address.version == 6 else f"http://{host}:{port}/"
