"""bridges/web.py over real sockets: the server binds at start (a port in use is one line), a loop that dies is
restarted by the supervisor on the same port, and close() releases the port at once."""

from __future__ import annotations

import socket
import time
import urllib.request

import pytest
from aiohttp import web

from bridges.web import WebServer, http_url
from engine.core.errors import DreamwireError
from engine.core.supervisor import default_supervisor


def _app() -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    return app


def _hello(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as reply:
        return reply.read().decode()


def test_start_serve_port_in_use_and_close_releases_the_port():
    server = WebServer(_app, "127.0.0.1", 0, "dreamwire-test-http", "test", "pick another port")
    server.start()
    try:
        assert server.port != 0 and _hello(server.port) == "hello"
        expected = rf"^test: cannot listen on TCP 127\.0\.0\.1:{server.port} \(.+\); pick another port$"
        with pytest.raises(DreamwireError, match=expected):
            WebServer(_app, "127.0.0.1", server.port, "dreamwire-test-http-2", "test", "pick another port").start()
    finally:
        start = time.monotonic()
        server.close()
    assert time.monotonic() - start < 2.0
    again = WebServer(_app, "127.0.0.1", server.port, "dreamwire-test-http", "test", "pick another port")
    again.start()  # the port is free to listen on again
    again.close()


def test_a_server_loop_that_dies_is_restarted_on_the_same_port():
    server = WebServer(_app, "127.0.0.1", 0, "dreamwire-test-http", "test", "pick another port")
    server.start()
    try:
        port, restarts = server.port, default_supervisor().snapshot()["thread_restarts"]
        loop = server._loop
        assert loop is not None
        server.call_soon(loop.stop)  # asyncio.run then raises on the server thread: a death
        deadline = time.monotonic() + 10
        while default_supervisor().snapshot()["thread_restarts"] == restarts or server._loop in (None, loop):
            assert time.monotonic() < deadline, "the server was not restarted"
            time.sleep(0.02)
        assert server.port == port and _hello(port) == "hello"
    finally:
        server.close()


def test_urls_a_browser_can_open():
    assert http_url("127.0.0.1", 8765) == "http://127.0.0.1:8765/"
    assert http_url("::1", 8765) == "http://[::1]:8765/"
    assert http_url("0.0.0.0", 8765) == f"http://{socket.gethostname()}:8765/"
