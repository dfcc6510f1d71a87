"""OSCQuery (the Vidvox proposal): an HTTP server that describes an OSC address space as JSON, with the LISTEN
extension on a WebSocket at the same port (bridges/oscquery_listen.py), and its mDNS advertisement
(`_oscjson._tcp` for the HTTP server, `_osc._udp` for the OSC port) so that Vezér, Chataigne, ossia score and
VDMX find it.

    GET /                      the whole tree: FULL_PATH, CONTENTS, TYPE, ACCESS, VALUE, RANGE, DESCRIPTION
    GET /dreamwire/prompt      one node and everything below it (404 when there is no such node)
    GET /…/guidance?VALUE      one attribute: {"VALUE": [1.2]} (204 when the node has none, 400 when unknown)
    GET /?HOST_INFO            NAME, OSC_IP, OSC_PORT, OSC_TRANSPORT, EXTENSIONS (LISTEN: true)
    WebSocket on any path      LISTEN / IGNORE, values pushed as binary OSC; changes sent as OSC packets

A request from a browser page is answered only for this instance's own pages (bridges/page_access.py), with
the CORS header that lets the page (served by the preview, another port) read it.

The nodes come from a callable (`nodes()`: {full path: attributes}), called per request so that VALUE is
always current. zeroconf is optional (`pip install 'dreamwire[oscquery]'`), imported only here, when asked.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
import socket
from collections.abc import Callable, Collection
from typing import Any
from urllib.parse import unquote

from aiohttp import web
from pythonosc.osc_message_builder import BuildError

from bridges.oscquery_listen import ListenHub, OnMessage, osc_packet
from bridges.page_access import ControlLink, links, needs_token, new_token, origin_allowed, token_ok
from bridges.web import WebServer, http_url

log = logging.getLogger(__name__)

Nodes = dict[str, dict[str, Any]]  # "/dreamwire/prompt/guidance" → {"TYPE": "f", "ACCESS": 3, …}
ATTRIBUTES = ("FULL_PATH", "CONTENTS", "TYPE", "ACCESS", "VALUE", "RANGE", "DESCRIPTION")
EXTENSIONS = {"ACCESS": True, "VALUE": True, "RANGE": True, "DESCRIPTION": True, "LISTEN": True}


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
    """The HTTP side and its LISTEN WebSocket (bridges/oscquery_listen.py) on their own thread (bridges/web.py).
    `port` is the bound port (useful with port 0). `publish(address, args)` (any thread) sends a value to the
    clients listening to `address`; `on_message(address, args, sender)` gets the changes they send (None: none
    taken). `name` is the instance name: the preview pages of that instance may use this server from a browser
    (bridges/page_access.py)."""

    def __init__(
        self,
        host: str,
        port: int,
        nodes: Callable[[], Nodes],
        host_info: Callable[[], dict[str, Any]],
        on_message: OnMessage | None = None,
        name: str = "dreamwire",
        error_address: str = "/dreamwire/error",
        allow: Collection[str] = (),
    ) -> None:
        self.nodes, self.host_info, self.name = nodes, host_info, name
        self.token = new_token() if needs_token(host) else None  # changes over the WebSocket need it
        self.listen = ListenHub(self._paths, on_message, error_address, allow)
        self.refused_origins = 0  # browser requests from a page that is not this instance's
        self._server = WebServer(self._app, host, port, "dreamwire-oscquery", "OSCQuery", "set osc.query_port")
        self.host = host

    @property
    def port(self) -> int:
        return self._server.port

    def start(self) -> None:
        self._server.start()
        links().offer_controls(self.name, self, ControlLink(self.port, self.token))
        url = http_url(self.host, self.port)
        if self.token is None:
            log.info("OSCQuery on %s (WebSocket: LISTEN)", url)
        else:
            log.warning("OSCQuery on %s, not loopback: changes over its WebSocket need ?token=%s", url, self.token)

    def close(self) -> None:
        links().withdraw_controls(self.name, self)
        self._server.close()

    def publish(self, address: str, args: Collection[Any]) -> None:
        """Send one message to the clients listening to `address` (any thread; never blocks, never raises)."""
        if not self.listen.wants(address):
            return
        try:
            packet = osc_packet(address, args)
        except (BuildError, ValueError, TypeError) as error:
            log.debug("OSCQuery: %s %r cannot be sent as OSC: %s", address, args, error)
            return
        self._server.call_soon(self.listen.deliver, address, packet)

    def counters(self) -> dict[str, int]:
        return {**self.listen.counters(), "ws_refused": self.listen.refused + self.refused_origins}

    # ---- on the server's loop ------------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{path:.*}", self._get)
        return app

    def _paths(self) -> set[str]:
        """Every node path: the parameters', commands' and status values', and the containers on the way."""
        paths = {"/"}
        for path in self.nodes():
            parts = [part for part in path.split("/") if part]
            paths.update("/" + "/".join(parts[: depth + 1]) for depth in range(len(parts)))
        return paths

    async def _get(self, request: web.Request) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        pages = links().page_ports(self.name) | {self.port}
        if not origin_allowed(origin, request.host, pages, self.host):
            self.refused_origins += 1
            log.debug("OSCQuery: refused a request from the page at %s", origin)
            return web.json_response({"error": f"pages from {origin} may not use this server"}, status=403)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self.listen.serve(request, token_ok(self.token, request.query.get("token")))
        cors = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"} if origin else {}
        query = unquote(request.query_string)
        if query == "HOST_INFO":  # the path is irrelevant for HOST_INFO
            return web.json_response(self.host_info(), headers=cors)
        node = find(build_tree(self.nodes()), request.path)
        if node is None:
            return web.json_response({"error": f"no OSC node at {request.path}"}, status=404, headers=cors)
        if not query:
            return web.json_response(node, headers=cors)
        if query not in ATTRIBUTES:
            return web.json_response({"error": f"unknown attribute {query!r}"}, status=400, headers=cors)
        if query not in node:
            return web.Response(status=204, headers=cors)  # e.g. VALUE of a write-only command
        return web.json_response({query: node[query]}, headers=cors)


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
