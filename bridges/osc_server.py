"""The OSC transport: a python-osc BlockingOSCUDPServer on its own thread that hands every message to one
callable, `on_message(address, args, sender)`.

What it adds to python-osc: malformed datagrams are counted (python-osc drops them silently) and logged at
debug level, never raised; unknown type tags count as malformed (python-osc would log a warning per datagram
and skip the argument); `Dispatcher(strict_timing=False)` so a bundle timestamped in the future is handled
now instead of putting the server to sleep; a 4 MB receive buffer for bursts; an optional allow-list of
sender IPs. It knows nothing of the engine: the router (engine/live/osc_control.py) decides what a message means.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import socketserver
import threading
from collections.abc import Callable, Collection, Generator
from typing import Any

from pythonosc.dispatcher import Dispatcher, Handler
from pythonosc.osc_packet import OscPacket
from pythonosc.osc_server import BlockingOSCUDPServer
from pythonosc.parsing import osc_types

from engine.core.errors import DreamwireError

log = logging.getLogger(__name__)

Sender = tuple[str, int]
OnMessage = Callable[[str, list[Any], Sender], None]

RECEIVE_BUFFER_BYTES = 4 * 2**20  # a burst of thousands of small datagrams waits here, not in the bin
MAX_DATAGRAM_BYTES = 65507  # the largest UDP payload (python-osc's socketserver default reads 8192)
TYPE_TAGS = frozenset("ihfdsbrmtTFN[]")  # what python-osc 1.10.2 parses; anything else is malformed
MAX_BUNDLE_DEPTH = 8
BUNDLE_HEAD = b"#bundle\x00"


def check_packet(data: bytes, depth: int = 0) -> None:
    """Raise ValueError unless `data` is an OSC message or bundle whose type tags python-osc parses.
    Only the structure is walked here; the arguments are parsed (and checked) by python-osc itself."""
    if depth > MAX_BUNDLE_DEPTH:
        raise ValueError(f"bundles nested deeper than {MAX_BUNDLE_DEPTH}")
    if len(data) % 4:
        raise ValueError(f"{len(data)} bytes is not a multiple of 4")
    if data.startswith(BUNDLE_HEAD):
        index = 16  # "#bundle\0" + an 8-byte time tag
        if len(data) < index:
            raise ValueError("bundle shorter than its header")
        while index < len(data):
            size = int.from_bytes(data[index : index + 4], "big", signed=True)
            if size <= 0 or index + 4 + size > len(data):
                raise ValueError(f"bundle element of {size} bytes at {index} does not fit")
            check_packet(data[index + 4 : index + 4 + size], depth + 1)
            index += 4 + size
        return
    if not data.startswith(b"/"):
        raise ValueError("neither a message (/…) nor a bundle (#bundle)")
    try:
        address, index = osc_types.get_string(data, 0)
        if not address.isprintable():
            raise ValueError(f"address {address!r} has unprintable characters")
        if index < len(data):
            tags, _ = osc_types.get_string(data, index)
            if not tags.startswith(","):
                raise ValueError(f"type tags {tags!r} do not start with ','")
            unknown = set(tags[1:]) - TYPE_TAGS
            if unknown:
                raise ValueError(f"unsupported type tags {''.join(sorted(unknown))!r}")
    except osc_types.ParseError as error:
        raise ValueError(str(error)) from None


class _EveryAddress(Dispatcher):
    """python-osc's dispatcher, with every address routed to one handler: the router does its own exact lookup
    (no per-message regex, and no message lost to an address pattern python-osc cannot compile)."""

    def __init__(self, handler: Callable[..., None]) -> None:
        super().__init__(strict_timing=False)  # a future time tag must never sleep the server
        self._only = Handler(handler, [], True)

    def handlers_for_address(self, address_pattern: str) -> Generator[Handler, None, None]:
        yield self._only


class _Server(BlockingOSCUDPServer):
    max_packet_size = MAX_DATAGRAM_BYTES

    def __init__(self, address: Sender, dispatcher: Dispatcher, owner: OscServer) -> None:
        self.owner = owner
        super().__init__(address, dispatcher)

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        super().server_bind()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return self.owner.accept(request[0], client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver would print a traceback; the router catches its own errors, so this is a bug worth a line
        log.exception("OSC: handling a datagram from %s failed", client_address)


class OscServer:
    """UDP OSC server on its own thread. `port` is the bound port (useful with port 0)."""

    def __init__(self, host: str, port: int, on_message: OnMessage, allow: Collection[str] = ()) -> None:
        self.on_message = on_message
        self.allow = frozenset(str(ipaddress.ip_address(ip)) for ip in allow)
        self.datagrams = 0  # every datagram received, accepted or not
        self.malformed = 0
        self.refused = 0  # from a sender outside osc.allow
        try:
            self._server = _Server((host, port), _EveryAddress(self._dispatch), self)
        except OSError as error:
            raise DreamwireError(f"OSC: cannot listen on UDP {host}:{port} ({error.strerror or error})") from None
        self.host, self.port = self._server.server_address[:2]
        self._serving = ServerThread(self._server, "dreamwire-osc")
        received = self._server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        if received < RECEIVE_BUFFER_BYTES:  # Linux reports twice what it grants; others may cap it lower
            log.info("OSC receive buffer is %d KB (the system caps it below 4 MB)", received // 1024)
        if not is_loopback(self.host):
            log.warning(
                "OSC listens on %s:%d (UDP), not loopback: anyone who reaches port %d can change live parameters"
                " (osc.allow limits the senders)",
                self.host,
                self.port,
                self.port,
            )

    def start(self) -> None:
        self._serving.start()
        log.info("OSC listening on %s:%d (UDP)", self.host, self.port)

    def close(self) -> None:
        self._serving.close()

    def accept(self, data: bytes, sender: Sender) -> bool:
        """On the server thread, before python-osc dispatches: count, check the sender and the structure."""
        self.datagrams += 1
        if self.allow and sender[0] not in self.allow:
            self.refused += 1
            log.debug("OSC: datagram from %s refused (not in osc.allow)", sender[0])
            return False
        try:
            check_packet(data)
            OscPacket(data)  # parses every argument; python-osc would swallow a failure here silently
        except Exception as error:  # any parse failure of a stranger's datagram: count it, never raise
            self.malformed += 1
            log.debug("OSC: malformed datagram from %s (%d bytes): %s", sender[0], len(data), error)
            return False
        return True

    def counters(self) -> dict[str, int]:
        return {"osc_datagrams": self.datagrams, "osc_malformed": self.malformed, "osc_refused": self.refused}

    def _dispatch(self, sender: Sender, address: str, *args: Any) -> None:
        self.on_message(address, list(args), sender)


class ServerThread:
    """A socketserver served on its own daemon thread; close() returns within the 0.1 s poll interval."""

    def __init__(self, server: socketserver.BaseServer, name: str) -> None:
        self.server, self.name = server, name
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, name=self.name, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:  # shutdown() on a server that never served would wait forever
            self.server.shutdown()
            self._thread.join()
            self._thread = None
        self.server.server_close()


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
