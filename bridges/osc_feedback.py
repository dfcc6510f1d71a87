"""OSC feedback: messages to one host:port (`osc.feedback`), sent from their own supervised thread.

TouchDesigner and Max receive on a socket of their own (OSC In CHOP, udpreceive), not on the port they send
from, so replies go to a configured address rather than back to the sender. Callers only enqueue: the engine
thread and the OSC server never wait on a socket. A failed send (no listener: ICMP refused, a full buffer, a
value OSC cannot carry) is counted (`counters()`, in the engine's status) and logged at warning once per streak
of failures; the next success ends the streak.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
from collections.abc import Sequence
from typing import Any

from pythonosc.osc_message_builder import BuildError, OscMessageBuilder

from engine.core.errors import DreamwireError
from engine.core.supervisor import SupervisedThread, spawn

log = logging.getLogger(__name__)

Message = tuple[str, Sequence[Any]]  # (address, arguments); argument types inferred: int i/h, float f, str s
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
    """Sends OSC messages to `target` ('host:port')."""

    def __init__(self, target: str) -> None:
        host, port = parse_host_port(target)
        try:
            family, kind, proto, _, self.address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        except socket.gaierror as error:
            raise DreamwireError(f"OSC feedback host {host!r} cannot be resolved ({error.strerror})") from None
        self.target = target
        self._socket = socket.socket(family, kind, proto)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: SupervisedThread | None = None
        self.sent = 0
        self.failed = 0
        self._failing = False  # in a streak of failed sends: logged once, at its start

    def send(self, address: str, *args: Any) -> None:
        """Queue one message (any thread)."""
        self._queue.put((address, args))

    def start(self) -> None:
        self._thread = spawn("dreamwire-osc-feedback", self._run)
        log.info("OSC feedback to %s", self.target)

    def close(self) -> None:
        """Send what is queued, then stop."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.stop(timeout=2.0)
            self._thread = None
        self._socket.close()

    def counters(self) -> dict[str, int]:
        return {"osc_feedback_sent": self.sent, "osc_feedback_failed": self.failed}

    def _run(self, stop: threading.Event) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            self._send(*item)

    def _send(self, address: str, args: Sequence[Any]) -> None:
        try:
            self._socket.sendto(encode(address, args), self.address)
        except (OSError, ValueError, BuildError) as error:  # no listener (ICMP refused), a full buffer, a bad value
            self.failed += 1
            if not self._failing:
                log.warning(
                    "OSC feedback to %s failed: %s (%s); further failures are counted in the status until one succeeds",
                    self.target,
                    address,
                    error,
                )
            self._failing = True
            return
        self.sent += 1
        if self._failing:
            log.info("OSC feedback to %s works again (%d failed sends in all)", self.target, self.failed)
        self._failing = False
