"""OSCQuery's LISTEN extension: a WebSocket on the OSCQuery port that pushes values as they change, and takes
changes as OSC packets.

    client → server  text    {"COMMAND": "LISTEN", "DATA": "/dreamwire/prompt/guidance"}   (and "IGNORE")
    server → client  binary  an OSC message at that address each time a value is sent there
    client → server  binary  an OSC message or bundle: a change, handled exactly as one over UDP

What is sent to LISTENers is what the control surface sends out (echoes of applied values, `/error`, status):
it calls `publish(address, args)` from any thread. A message goes only to the clients that listen to its address.

Never raises for what a client sends: malformed JSON, an unknown command or path, a malformed OSC packet, a
change without the token (bridges/page_access.py) or from a sender outside `osc.allow`, and a frame over 64 KB
(the connection is then closed with 1009, as aiohttp does) are refused and counted (`ws_refused`). A client that
stops reading loses its oldest queued packets (`ws_dropped`), never the server's time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket

from bridges.osc_server import check_packet

log = logging.getLogger(__name__)

OnMessage = Callable[[str, list[Any], tuple[str, int]], None]
MAX_MESSAGE_BYTES = 65536  # a UDP OSC datagram is at most 65,507 bytes: nothing bigger is a real message
MAX_PATHS = 4096  # LISTENs per client
SEND_QUEUE = 256  # packets waiting for one client; the oldest is dropped when it is full
KNOWN_FOR = 1.0  # seconds the set of node paths is reused before it is asked for again


def osc_packet(address: str, args: Collection[Any]) -> bytes:
    """One OSC message; argument types inferred (int i, or h past 32 bits; float f; str s; bool T/F; None N)."""
    builder = OscMessageBuilder(address=address)
    for arg in args:
        builder.add_arg(arg)
    return builder.build().dgram


@dataclass(eq=False)
class _Client:
    socket: web.WebSocketResponse
    sender: tuple[str, int]
    may_change: bool
    paths: set[str] = field(default_factory=set)
    queue: asyncio.Queue[bytes] = field(default_factory=lambda: asyncio.Queue(SEND_QUEUE))


class ListenHub:
    """The WebSocket clients of one OSCQuery server. Everything but publish-side `wants` runs on its loop."""

    def __init__(
        self,
        paths: Callable[[], Collection[str]],
        on_message: OnMessage | None,
        error_address: str,
        allow: Collection[str] = (),
    ) -> None:
        self._paths = paths  # every node path of the tree, containers included
        self._known: frozenset[str] = frozenset()
        self._known_at = -KNOWN_FOR
        self.on_message = on_message  # None: changes over the WebSocket are refused
        self.error_address = error_address
        self.allow = frozenset(allow)
        self._clients: set[_Client] = set()
        self._listeners: dict[str, int] = {}  # address → clients listening (read from other threads)
        self.messages = 0  # every WebSocket message received
        self.refused = 0
        self.dropped = 0

    def counters(self) -> dict[str, int]:
        return {"ws_messages": self.messages, "ws_refused": self.refused, "ws_dropped": self.dropped}

    def wants(self, address: str) -> bool:
        """Whether any client listens to `address` (any thread: lets publishers skip the rest)."""
        return address in self._listeners

    def deliver(self, address: str, packet: bytes) -> None:
        for client in self._clients:
            if address in client.paths:
                self._queue(client, packet)

    async def serve(self, request: web.Request, may_change: bool) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES)
        await socket.prepare(request)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        sender = (str(peer[0]), int(peer[1])) if peer else ("", 0)
        client = _Client(socket, sender, may_change)
        self._clients.add(client)
        writer = asyncio.create_task(self._write(client))
        try:
            async for message in socket:
                self.messages += 1
                if message.type == WSMsgType.TEXT:
                    self._command(client, message.data)
                elif message.type == WSMsgType.BINARY:
                    self._osc(client, message.data)
                else:  # ERROR: a frame over MAX_MESSAGE_BYTES or a protocol error; aiohttp closes the socket
                    self._refuse(client, f"WebSocket error ({socket.exception()})")
        finally:
            self._clients.discard(client)
            for path in client.paths:
                self._unlisten(path)
            writer.cancel()
        return socket

    # ---- what a client sends -------------------------------------------------------------------------------

    def _command(self, client: _Client, text: str) -> None:
        try:
            command = json.loads(text)
        except ValueError:
            self._refuse(client, f"malformed JSON ({len(text)} characters)")
            return
        if not isinstance(command, dict) or not isinstance(command.get("DATA"), str):
            self._refuse(client, 'not {"COMMAND": ..., "DATA": "/path"}')
            return
        verb, path = command.get("COMMAND"), command["DATA"]
        if verb == "LISTEN":
            if path not in self._known_paths():
                self._refuse(client, f"LISTEN {path[:80]!r}: no such node")
            elif path not in client.paths:
                if len(client.paths) >= MAX_PATHS:
                    self._refuse(client, f"LISTEN: more than {MAX_PATHS} paths")
                    return
                client.paths.add(path)
                self._listeners[path] = self._listeners.get(path, 0) + 1
        elif verb == "IGNORE":
            if path in client.paths:
                client.paths.discard(path)
                self._unlisten(path)
        else:
            self._refuse(client, f"unknown command {str(verb)[:40]!r} (LISTEN, IGNORE)")

    def _osc(self, client: _Client, data: bytes) -> None:
        if self.on_message is None:
            self._refuse(client, "this server takes no changes")
            return
        if not client.may_change:
            self._refuse(client, "a change without the token")
            self._queue(
                client,
                osc_packet(
                    self.error_address,
                    ["changes over this WebSocket need the token that dreamwire logged at start (?token=...)"],
                ),
            )
            return
        if self.allow and client.sender[0] not in self.allow:
            self._refuse(client, "a change from a sender outside osc.allow")
            return
        try:
            check_packet(data)
            messages = OscPacket(data).messages  # parses every argument
        except Exception as error:  # any parse failure of a stranger's packet: count it, never raise
            self._refuse(client, f"malformed OSC ({len(data)} bytes): {error}")
            return
        for timed in messages:
            try:
                self.on_message(timed.message.address, list(timed.message.params), client.sender)
            except Exception:  # the router answers what the sender got wrong itself: this is a bug, logged
                log.exception("OSCQuery WebSocket: handling %s failed", timed.message.address)

    def _refuse(self, client: _Client, why: str) -> None:
        self.refused += 1
        log.debug("OSCQuery WebSocket %s: refused: %s", client.sender[0], why)

    # ---- what a client is sent ---------------------------------------------------------------------------

    def _queue(self, client: _Client, packet: bytes) -> None:
        if client.queue.full():
            client.queue.get_nowait()  # a client that stopped reading: the oldest value goes
            self.dropped += 1
        client.queue.put_nowait(packet)

    async def _write(self, client: _Client) -> None:
        try:
            while not client.socket.closed:
                await client.socket.send_bytes(await client.queue.get())
        except ConnectionError:  # the client went away; the reader side ends the connection
            pass

    def _unlisten(self, path: str) -> None:
        left = self._listeners.get(path, 0) - 1
        if left > 0:
            self._listeners[path] = left
        else:
            self._listeners.pop(path, None)

    def _known_paths(self) -> frozenset[str]:
        now = time.monotonic()
        if now - self._known_at > KNOWN_FOR:
            self._known, self._known_at = frozenset(self._paths()), now
        return self._known
