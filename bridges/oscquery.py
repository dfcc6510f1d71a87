"""OSCQuery (the Vidvox proposal): an HTTP server that describes an OSC address space as JSON, and its
mDNS advertisement (`_oscjson._tcp` for the HTTP server, `_osc._udp` for the OSC port) so that Vezér,
Chataigne, ossia score and VDMX find it.

    GET /                      the whole tree: FULL_PATH, CONTENTS, TYPE, ACCESS, VALUE, RANGE, DESCRIPTION
    GET /dreamwire/prompt      one node and everything below it (404 when there is no such node)
    GET /…/guidance?VALUE      one attribute: {"VALUE": [1.2]} (204 when the node has none, 400 when unknown)
    GET /?HOST_INFO            NAME, OSC_IP, OSC_PORT, OSC_TRANSPORT, EXTENSIONS

The nodes come from a callable (`nodes()`: {full path: attributes}), called per request so that VALUE is
always current. zeroconf is optional (`pip install 'dreamwire[oscquery]'`), imported only here, when asked.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import json
import logging
import socket
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from bridges.osc_server import ServerThread, is_loopback
from engine.core.errors import DreamwireError

log = logging.getLogger(__name__)

Nodes = dict[str, dict[str, Any]]  # "/dreamwire/prompt/guidance" → {"TYPE": "f", "ACCESS": 3, …}
ATTRIBUTES = ("FULL_PATH", "CONTENTS", "TYPE", "ACCESS", "VALUE", "RANGE", "DESCRIPTION")
EXTENSIONS = {"ACCESS": True, "VALUE": True, "RANGE": True, "DESCRIPTION": True, "LISTEN": False}


def build_tree(nodes: Nodes) -> dict[str, Any]:
    """Flat {path: attributes} → the nested OSCQuery tree; containers on the way are made as needed."""
    root: dict[str, Any] = {"FULL_PATH": "/", "ACCESS": 0, "CONTENTS": {}}
    for path in sorted(nodes):
        node = root
        parts = [part for part in path.split("/") if part]
        for depth, part in enumerate(parts):
            contents = node.setdefault("CONTENTS", {})
            if part not in contents:
                contents[part] = {"FULL_PATH": "/" + "/".join(parts[: depth + 1]), "ACCESS": 0}
            node = contents[part]
        node.update(nodes[path])
    return root


def find(tree: dict[str, Any], path: str) -> dict[str, Any] | None:
    node = tree
    for part in (part for part in path.split("/") if part):
        node = node.get("CONTENTS", {}).get(part)
        if node is None:
            return None
    return node


class OscQueryServer:
    """The HTTP side on its own thread. `port` is the bound port (useful with port 0)."""

    def __init__(
        self, host: str, port: int, nodes: Callable[[], Nodes], host_info: Callable[[], dict[str, Any]]
    ) -> None:
        handler = type("_Handler", (_Handler,), {"nodes": staticmethod(nodes), "host_info": staticmethod(host_info)})
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as error:
            raise DreamwireError(
                f"OSCQuery: cannot listen on TCP {host}:{port} ({error.strerror or error}); set osc.query_port"
            ) from None
        self._server.daemon_threads = True
        self.host, self.port = self._server.server_address[:2]
        self._serving = ServerThread(self._server, "dreamwire-oscquery")
        if not is_loopback(str(self.host)):
            log.warning("OSCQuery serves on %s:%d (TCP), not loopback", self.host, self.port)

    def start(self) -> None:
        self._serving.start()
        log.info("OSCQuery on http://%s:%d/", self.host, self.port)

    def close(self) -> None:
        self._serving.close()


class _Handler(BaseHTTPRequestHandler):
    nodes: Callable[[], Nodes]
    host_info: Callable[[], dict[str, Any]]
    server_version = "dreamwire-oscquery"

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = unquote(url.query)
        if query == "HOST_INFO":  # the path is irrelevant for HOST_INFO
            self._json(HTTPStatus.OK, self.host_info())
            return
        node = find(build_tree(self.nodes()), unquote(url.path))
        if node is None:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no OSC node at {url.path}"})
        elif not query:
            self._json(HTTPStatus.OK, node)
        elif query not in ATTRIBUTES:
            self._json(HTTPStatus.BAD_REQUEST, {"error": f"unknown attribute {query!r}"})
        elif query not in node:
            self.send_response(HTTPStatus.NO_CONTENT)  # e.g. VALUE of a write-only command
            self.end_headers()
        else:
            self._json(HTTPStatus.OK, {query: node[query]})

    def _json(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # the base class names it `format`
        log.debug("OSCQuery %s: " + format, self.client_address[0], *args)


class Advertisement:
    """mDNS records for the OSCQuery (TCP) and OSC (UDP) ports. Registration (probing takes a second or two)
    runs on zeroconf's own event loop, so neither the start nor a quick stop waits for it; close() withdraws
    what was registered and cancels what was not."""

    def __init__(self, zeroconf: Any, infos: list[Any]) -> None:
        self._zeroconf = zeroconf
        self._pending = [
            asyncio.run_coroutine_threadsafe(
                zeroconf.async_register_service(info, allow_name_change=True), zeroconf.loop
            )
            for info in infos
        ]
        for future, info in zip(self._pending, infos, strict=True):
            future.add_done_callback(lambda done, info=info: _registered(done, info))

    def close(self) -> None:
        for future in self._pending:
            future.cancel()
        self._zeroconf.close()  # sends goodbyes for what was registered


def _registered(future: concurrent.futures.Future[Any], info: Any) -> None:
    if future.cancelled():
        return
    error = future.exception()
    if error is not None:  # a network without multicast, say: discovery only, never the show
        log.warning("mDNS: could not advertise %s: %s", info.name, error)
    else:
        log.info("mDNS: advertised %s on port %d", info.name, info.port)


def advertise(name: str, host: str, query_port: int, osc_port: int) -> Advertisement | None:
    """Advertise `_oscjson._tcp` and `_osc._udp`; None (and one info line) without the zeroconf package."""
    try:
        import zeroconf
    except ImportError:
        log.info("OSCQuery discovery (mDNS) is off: pip install 'dreamwire[oscquery]' to advertise it")
        return None
    if ipaddress.ip_address(_resolve(host)).is_unspecified:
        addresses = zeroconf.get_all_addresses()
        interfaces: Any = zeroconf.InterfaceChoice.All
    else:
        addresses = [_resolve(host)]
        interfaces = [_resolve(host)]
    server = f"{socket.gethostname().split('.')[0]}.local."
    infos = [
        zeroconf.ServiceInfo(
            kind,
            f"{name}.{kind}",
            port=port,
            parsed_addresses=addresses,
            server=server,
            properties={"txtvers": "1"},
        )
        for kind, port in (("_oscjson._tcp.local.", query_port), ("_osc._udp.local.", osc_port))
    ]
    try:
        instance = zeroconf.Zeroconf(interfaces=interfaces)
    except Exception as error:  # optional discovery: whatever the network stack says, the show goes on
        log.warning("mDNS: discovery is off (%s: %s)", type(error).__name__, error)
        return None
    return Advertisement(instance, infos)


def _resolve(host: str) -> str:
    return socket.getaddrinfo(host, None)[0][4][0]
