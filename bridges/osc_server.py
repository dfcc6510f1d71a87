"""The OSC server: a UDP socket on its own supervised thread that hands every message to one callable,
`on_message(address, args, sender)` (the control surface's `handle`, through engine/control/osc.py).

python-osc parses; the rest is ours. Each datagram is parsed once (`OscPacket`), after a structural check that
python-osc does not make: unknown type tags and arguments shorter than their type tags are malformed (python-osc
would skip the one and zero-pad the other, so a truncated float became 0.0). Malformed datagrams are counted and
logged at debug level, never raised. Bundles are handled at once whatever their time tag (a future time tag
must never put the server to sleep). A 4 MB receive buffer for bursts; an optional allow-list of sender IPs.
It knows nothing of the engine.

Floods: after a datagram, the ones already waiting in the socket are read too (up to MAX_BATCH), and the batch is
sorted out before anything is handed on. When more than FLOOD_BATCH were waiting (a flood, not a controller's
ordinary stream: those are all answered), a message to an address for which `newest_wins(address)` says so (the
control surface: parameters and blends) is dropped unread when a later message of the batch to the same address
will be handed on (from an allowed sender, well-formed) and only newest-wins messages come between the two: any
other message (a command, /get, a transition, a bundle, an unknown address) keeps its place, and nothing is moved
past it. So four controllers on one fader, or one TouchDesigner OSC Out CHOP sending all its channels every frame,
cost a read per datagram and a parse per address. Each dropped message is counted (`osc_coalesced`) and, like a
superseded change, answered by nothing.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import socketserver
import threading
from collections.abc import Callable, Collection
from typing import Any

from pythonosc.osc_packet import OscPacket
from pythonosc.parsing import osc_types

from engine.core.errors import DreamwireError
from engine.core.supervisor import SupervisedThread, spawn

log = logging.getLogger(__name__)

Sender = tuple[str, int]
OnMessage = Callable[[str, list[Any], Sender], None]
NewestWins = Callable[[str], bool]
Messages = list[tuple[str, list[Any]]]

MAX_BATCH = 1024  # datagrams read in one go from the socket before any is handled
FLOOD_BATCH = 64  # more waiting than this is a flood: runs to one address are coalesced (see the docstring)
RECEIVE_BUFFER_BYTES = 4 * 2**20  # a burst of thousands of small datagrams waits here, not in the bin
MAX_DATAGRAM_BYTES = 65507  # the largest UDP payload (python-osc's socketserver default reads 8192)
TYPE_TAGS = frozenset("ihfdsbrmtTFN[]")  # what python-osc 1.10.2 parses; anything else is malformed
MAX_BUNDLE_DEPTH = 8
BUNDLE_HEAD = b"#bundle\x00"
FIXED_SIZE = {"i": 4, "f": 4, "r": 4, "m": 4, "c": 4, "h": 8, "d": 8, "t": 8}  # payload bytes per type tag


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
            tags, after = osc_types.get_string(data, index)
            if not tags.startswith(","):
                raise ValueError(f"type tags {tags!r} do not start with ','")
            unknown = set(tags[1:]) - TYPE_TAGS
            if unknown:
                raise ValueError(f"unsupported type tags {''.join(sorted(unknown))!r}")
            check_arguments(data, after, tags[1:])
    except osc_types.ParseError as error:
        raise ValueError(str(error)) from None


def check_arguments(data: bytes, index: int, tags: str) -> None:
    """Raise ValueError when the arguments from `index` are shorter than `tags` say (python-osc zero-pads)."""
    for number, tag in enumerate(tags, 1):
        if tag in FIXED_SIZE:
            index += FIXED_SIZE[tag]
        elif tag == "s":
            end = data.find(b"\x00", index)
            if end < 0:
                raise ValueError(f"argument {number} (s) has no end")
            index += _padded(end - index + 1)
        elif tag == "b":
            if index + 4 > len(data):
                raise ValueError(f"argument {number} (b) has no size")
            size = int.from_bytes(data[index : index + 4], "big", signed=True)
            if size < 0:
                raise ValueError(f"argument {number} (b) has a negative size")
            index += 4 + _padded(size)
        if index > len(data):
            raise ValueError(f"argument {number} ({tag}) is missing: the message ends at byte {len(data)}")


def _padded(size: int) -> int:
    return (size + 3) // 4 * 4


def parse(data: bytes) -> Messages:
    """Every message of a checked datagram, in order (bundles flattened; their time tags ignored)."""
    return [(timed.message.address, list(timed.message.params)) for timed in OscPacket(data).messages]


class _Server(socketserver.UDPServer):
    max_packet_size = MAX_DATAGRAM_BYTES

    def __init__(self, address: Sender, owner: OscServer) -> None:
        self.owner = owner
        super().__init__(address, socketserver.BaseRequestHandler)

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        super().server_bind()

    def finish_request(self, request: Any, client_address: Any) -> None:
        self.owner.receive(request[0], client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver would print a traceback; receive() catches its own errors, so this is a bug worth a line
        log.exception("OSC: handling a datagram from %s failed", client_address)


class OscServer:
    """UDP OSC server on its own thread. `port` is the bound port (useful with port 0)."""

    def __init__(
        self,
        host: str,
        port: int,
        on_message: OnMessage,
        allow: Collection[str] = (),
        newest_wins: NewestWins | None = None,
    ) -> None:
        self.on_message = on_message
        self.newest_wins = newest_wins
        self.allow = frozenset(str(ipaddress.ip_address(ip)) for ip in allow)
        self.datagrams = 0  # every datagram received, accepted or not
        self.malformed = 0
        self.refused = 0  # from a sender outside osc.allow
        self.coalesced = 0  # dropped unread: a newer message to the same address followed in the same flood
        try:
            self._server = _Server((host, port), self)
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

    def receive(self, data: bytes, sender: Sender) -> None:
        """On the server thread: this datagram and those already waiting, each parsed once, a flood's superseded
        messages dropped unread (see the module docstring), the rest handed on in the order they came."""
        batch = [(data, sender), *self._waiting()]
        self.datagrams += len(batch)
        coalesce = len(batch) > FLOOD_BATCH and self.newest_wins is not None
        for source, messages in self._sorted_out(batch, coalesce):
            for address, args in messages:
                self.on_message(address, args, source)

    def _waiting(self) -> list[tuple[bytes, Sender]]:
        """The datagrams already in the socket's buffer (up to MAX_BATCH - 1), read without waiting."""
        sock, found = self._server.socket, []
        sock.settimeout(0.0)
        try:
            while len(found) < MAX_BATCH - 1:
                found.append(sock.recvfrom(MAX_DATAGRAM_BYTES))
        except OSError:  # BlockingIOError: nothing more waits (or a transient error: the next read says so)
            pass
        finally:
            sock.settimeout(None)
        return found

    def _sorted_out(self, batch: list[tuple[bytes, Sender]], coalesce: bool) -> list[tuple[Sender, Messages]]:
        """The batch's messages to hand on, in order. Walked from the newest: `later` holds the newest-wins
        addresses with a message already kept further on and only newest-wins messages since; any other
        message empties it, so nothing is dropped across a command, a bundle or an unknown address."""
        kept: list[tuple[Sender, Messages]] = []
        later: set[bytes] = set()
        wins: dict[bytes, bool] = {}  # newest_wins per address, asked once per batch
        for datagram, source in reversed(batch):
            address = self._newest_wins_address(datagram, wins) if coalesce else None
            if address is None:
                later.clear()
            elif address in later and self._allowed(source):
                self.coalesced += 1
                continue
            messages = self._parsed(datagram, source)
            if messages is None:
                continue
            if address is not None:
                later.add(address)
            kept.append((source, messages))
        kept.reverse()
        return kept

    def _newest_wins_address(self, datagram: bytes, wins: dict[bytes, bool]) -> bytes | None:
        """The datagram's address when it is a message to a newest-wins address, else None."""
        if not datagram.startswith(b"/"):
            return None  # a bundle (its messages keep their place) or something malformed
        address = datagram[: datagram.find(b"\0")]
        if address not in wins:
            try:
                wins[address] = self.newest_wins is not None and self.newest_wins(address.decode())
            except UnicodeDecodeError:
                wins[address] = False
        return address if wins[address] else None

    def _allowed(self, sender: Sender) -> bool:
        return not self.allow or sender[0] in self.allow

    def _parsed(self, data: bytes, sender: Sender) -> Messages | None:
        """Check the sender, check and parse the datagram (once): its messages, or None (counted, logged)."""
        if not self._allowed(sender):
            self.refused += 1
            log.debug("OSC: datagram from %s refused (not in osc.allow)", sender[0])
            return None
        try:
            check_packet(data)
            return parse(data)
        except Exception as error:  # any parse failure of a stranger's datagram: count it, never raise
            self.malformed += 1
            log.debug("OSC: malformed datagram from %s (%d bytes): %s", sender[0], len(data), error)
            return None

    def counters(self) -> dict[str, int]:
        return {
            "osc_datagrams": self.datagrams,
            "osc_malformed": self.malformed,
            "osc_refused": self.refused,
            "osc_coalesced": self.coalesced,
        }


class ServerThread:
    """A socketserver served on a supervised thread (engine/core/supervisor.py): one request at a time, the stop
    event looked at every 0.1 s, so close() returns within that."""

    POLL_SECONDS = 0.1

    def __init__(self, server: socketserver.BaseServer, name: str) -> None:
        self.server, self.name = server, name
        self.server.timeout = self.POLL_SECONDS
        self._thread: SupervisedThread | None = None

    def start(self) -> None:
        self._thread = spawn(self.name, self._serve)

    def _serve(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.server.handle_request()  # returns after one request or the timeout

    def close(self) -> None:
        if self._thread is not None:
            self._thread.stop(timeout=2.0)
            self._thread = None
        self.server.server_close()


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
