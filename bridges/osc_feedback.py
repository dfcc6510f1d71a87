"""OSC feedback: messages to one host:port (`osc.feedback`), sent from their own thread.

TouchDesigner and Max receive on a socket of their own (OSC In CHOP, udpreceive), not on the port they send
from, so replies go to a configured address rather than back to the sender. Callers only enqueue: the engine
thread and the OSC server never wait on a socket. A status burst is made (by a callable, on this thread)
`status_hz` times a second.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pythonosc.osc_message_builder import BuildError, OscMessageBuilder

from engine.core.errors import DreamwireError

log = logging.getLogger(__name__)

Message = tuple[str, Sequence[Any]]  # (address, arguments); argument types inferred: int i/h, float f, str s
MakeMessages = Callable[[], Iterable[Message]]
_STOP = object()


def parse_host_port(text: str) -> tuple[str, int]:
    """'127.0.0.1:9001' or '[::1]:9001' → (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise DreamwireError(f"OSC feedback address {text!r} is not host:port, e.g. 127.0.0.1:9001")
    return host.strip("[]"), int(port)


def encode(address: str, args: Sequence[Any]) -> bytes:
    builder = OscMessageBuilder(address=address)
    for arg in args:
        builder.add_arg(arg)
    return builder.build().dgram


class OscFeedback:
    """Sends OSC messages to `target` ('host:port'; '' for none: outlets only); `status()` is called every
    1/status_hz s (0: never). Every message also goes to each of `outlets` (fn(address, args), on this thread):
    the OSCQuery WebSocket's publish()."""

    def __init__(self, target: str, status: MakeMessages | None = None, status_hz: float = 0.0) -> None:
        self.target = target
        self.outlets: list[Callable[[str, Sequence[Any]], None]] = []
        self._socket: socket.socket | None = None
        if target:
            host, port = parse_host_port(target)
            try:
                family, kind, proto, _, self.address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
            except socket.gaierror as error:
                raise DreamwireError(f"OSC feedback host {host!r} cannot be resolved ({error.strerror})") from None
            self._socket = socket.socket(family, kind, proto)
        self._status = status
        self._period = 1.0 / status_hz if status and status_hz > 0 else None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.failed = 0

    def send(self, address: str, *args: Any) -> None:
        """Queue one message (any thread)."""
        self._queue.put((address, args))

    def defer(self, make: MakeMessages) -> None:
        """Queue a callable that makes messages on the feedback thread (for callers that must stay quick)."""
        self._queue.put(make)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dreamwire-osc-feedback", daemon=True)
        self._thread.start()
        if self.target:
            log.info("OSC feedback to %s", self.target)

    def close(self) -> None:
        """Send what is queued, then stop."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout=2.0)
            self._thread = None
        if self._socket is not None:
            self._socket.close()

    def _run(self) -> None:
        next_status = time.perf_counter() + (self._period or 0.0)
        while True:
            timeout = None if self._period is None else max(0.0, next_status - time.perf_counter())
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = self._status
                next_status += self._period or 0.0
                next_status = max(next_status, time.perf_counter())  # after a stall, no catch-up burst
            if item is _STOP:
                return
            messages = [item] if isinstance(item, tuple) else self._make(item)
            for address, args in messages:
                if self._socket is not None:
                    self._send(address, args)
                for outlet in self.outlets:
                    outlet(address, args)

    def _make(self, make: MakeMessages) -> list[Message]:
        try:
            return list(make())
        except Exception:  # a bug in a status or echo maker must not silence feedback for the rest of the show
            log.exception("OSC feedback: making messages failed")
            return []

    def _send(self, address: str, args: Sequence[Any]) -> None:
        assert self._socket is not None
        try:
            self._socket.sendto(encode(address, args), self.address)
            self.sent += 1
        except (OSError, ValueError, BuildError) as error:  # no listener (ICMP refused), a full buffer, a bad value
            self.failed += 1
            log.debug("OSC feedback %s to %s failed: %s", address, self.target, error)
