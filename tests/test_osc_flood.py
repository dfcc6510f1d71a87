"""The OSC server under a flood (bridges/osc_server.py): below FLOOD_BATCH waiting datagrams every message is
handled (and so answered); above it, a run of messages to one newest-wins address costs one parse, the newest."""

from __future__ import annotations

import socket
from typing import Any

from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message_builder import OscMessageBuilder

from bridges.osc_server import FLOOD_BATCH, OscServer


def _message(address: str, value: float) -> bytes:
    builder = OscMessageBuilder(address)
    builder.add_arg(value)
    return builder.build().dgram


def _bundle(address: str, value: float) -> bytes:
    message = OscMessageBuilder(address)
    message.add_arg(value)
    bundle = OscBundleBuilder(IMMEDIATELY)
    bundle.add_content(message.build())
    return bundle.build().dgram


def _serve_once(datagrams: list[bytes]) -> tuple[list[tuple[str, list[Any]]], OscServer]:
    """Queue every datagram in the server's socket, then let it handle one request (it reads the rest as a batch)."""
    handled: list[tuple[str, list[Any]]] = []
    server = OscServer(
        "127.0.0.1", 0, lambda address, args, sender: handled.append((address, args)), (), lambda a: a != "/query"
    )
    try:
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for data in datagrams:
            out.sendto(data, ("127.0.0.1", server.port))
        out.close()
        server._server.handle_request()  # the server thread's one call, made here: no race with the sends
    finally:
        server.close()
    return handled, server


def test_below_a_flood_every_message_is_handled():
    handled, server = _serve_once([_message("/fader", i) for i in range(FLOOD_BATCH)])
    assert [args[0] for _, args in handled] == list(range(FLOOD_BATCH)) and server.coalesced == 0


def test_a_flood_keeps_the_newest_of_each_run_and_every_other_message():
    first, second = 150, 99
    datagrams = [_message("/fader", i) for i in range(first)]
    datagrams += [_message("/query", 1), _message("/query", 2), _bundle("/fader", -1)]
    datagrams += [_message("/fader", 1000 + i) for i in range(second)]
    handled, server = _serve_once(datagrams)
    assert handled == [
        ("/fader", [first - 1]),
        ("/query", [1]),  # not newest-wins: each one is handled
        ("/query", [2]),
        ("/fader", [-1]),  # a bundle is never dropped unread
        ("/fader", [1000 + second - 1]),
    ]
    assert server.datagrams == len(datagrams) and server.coalesced == first - 1 + second - 1


def test_a_flood_keeps_the_newest_per_address_between_ordered_messages_and_never_drops_for_a_bad_one():
    # An OSC Out CHOP sends all its channels every frame: /a /b /a /b … Between two ordered messages (here /query),
    # each newest-wins address keeps its newest message; nothing moves past the ordered one.
    datagrams = [_message(f"/{name}", i) for i in range(40) for name in ("a", "b")]
    datagrams += [_message("/query", 1)]
    datagrams += [_message(f"/{name}", 100 + i) for i in range(40) for name in ("b", "a")]
    # A newer message that will not be handed on (malformed: a float tag, no float) supersedes nothing.
    datagrams += [_message("/a", 500), b"/a\x00\x00,f\x00\x00"]
    handled, server = _serve_once(datagrams)
    assert handled == [("/a", [39]), ("/b", [39]), ("/query", [1]), ("/b", [139]), ("/a", [500])]
    assert server.malformed == 1
    assert server.datagrams == len(datagrams) == server.coalesced + len(handled) + server.malformed


def test_a_flood_message_from_a_refused_sender_supersedes_nothing():
    server = OscServer("127.0.0.1", 0, lambda *a: None, ["10.0.0.1"], lambda a: True)
    try:
        batch = [(_message("/fader", i), ("10.0.0.1", 9000)) for i in range(FLOOD_BATCH)]
        batch.append((_message("/fader", -1), ("10.0.0.66", 9000)))  # outside osc.allow
        kept = server._sorted_out(batch, coalesce=True)
    finally:
        server.close()
    assert kept == [(("10.0.0.1", 9000), [("/fader", [FLOOD_BATCH - 1])])]
    assert server.refused == 1 and server.coalesced == FLOOD_BATCH - 1
