"""OSCQuery's LISTEN WebSocket over real sockets, with a plain `websockets` client (not our code): values pushed
as binary OSC, IGNORE, a fuzz of bad messages, the token on a non-loopback bind and the browser-origin rule."""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import preset
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from bridges.page_access import is_loopback, needs_token, origin_allowed, token_ok
from bridges.preview import PreviewSink
from engine.config.schema import OscConfig
from engine.control.osc import OscTransport
from engine.live.loop import LiveEngine

NS = "/dreamwire"
GUIDANCE = f"{NS}/prompt/guidance"
DELTA = f"{NS}/prompt/delta"


def osc(address: str, *args: Any) -> bytes:
    builder = OscMessageBuilder(address=address)
    for arg in args:
        builder.add_arg(arg)
    return builder.build().dgram


def command(verb: str, path: str) -> str:
    return json.dumps({"COMMAND": verb, "DATA": path})


class Rig:
    """An engine on the tiny model with its OSC surface; `rendering` runs its loop on a thread."""

    def __init__(self, models: Any, host: str = "127.0.0.1", rendering: bool = False) -> None:
        config = preset()
        config.osc = OscConfig(host=host, port=0, query_port=0, feedback="", status_hz=0)
        self.engine = LiveEngine(config, models=models)
        self.surface = OscTransport.alone(self.engine, config.osc, discovery=False)
        assert self.surface.server is not None and self.surface.query is not None
        self.query = self.surface.query
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp_target = ("127.0.0.1", self.surface.server.port)
        self._stop = threading.Event()
        self._loop: threading.Thread | None = None
        if rendering:
            from bridges.pattern import PatternSource

            self.engine.start_io(source=PatternSource(64, 64, fps=0), sinks=[])
            self._loop = threading.Thread(target=self._render, name="test-engine")
            self._loop.start()

    def _render(self) -> None:
        while not self._stop.is_set():
            self.engine.apply_pending_controls()
            self.engine.step()

    def websocket(self, token: str | None = None, origin: str | None = None) -> ClientConnection:
        url = f"ws://127.0.0.1:{self.query.port}/" + (f"?token={token}" if token is not None else "")
        return connect(url, origin=origin, proxy=None, max_size=None)  # type: ignore[arg-type]

    def send_udp(self, address: str, *args: Any) -> None:
        self.udp.sendto(osc(address, *args), self.udp_target)

    def until(self, check: Any, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, f"never: {what}"
            if self._loop is None:
                self.engine.apply_pending_controls()  # as the loop would, between two frames
            time.sleep(0.005)

    def close(self) -> None:
        self._stop.set()
        if self._loop is not None:
            self._loop.join()
        self.udp.close()
        self.surface.close()
        self.engine.close()


@pytest.fixture
def rig(tiny_taesd_models) -> Iterator[Any]:
    rigs: list[Rig] = []

    def make(**options: Any) -> Rig:
        rigs.append(Rig(tiny_taesd_models, **options))
        return rigs[-1]

    yield make
    for each in rigs:
        each.close()


def packet(client: ClientConnection, timeout: float = 30.0) -> OscMessage:
    data = client.recv(timeout=timeout)
    assert isinstance(data, bytes), f"a text frame, not a binary OSC packet: {data!r}"
    return OscMessage(data)


def test_listen_pushes_each_applied_value_as_binary_osc_and_ignore_stops_it(rig):
    r = rig()
    _, info, _ = _get(f"http://127.0.0.1:{r.query.port}/?HOST_INFO")
    assert info["EXTENSIONS"]["LISTEN"] is True
    with r.websocket() as client:
        client.send(command("LISTEN", GUIDANCE))
        r.until(lambda: r.query.listen.wants(GUIDANCE), "the LISTEN arrived")
        r.send_udp(GUIDANCE, 2.5)
        r.until(lambda: r.engine.preset.prompt.guidance == 2.5, "guidance 2.5 applied")
        message = packet(client)  # pushed once applied
        assert (message.address, message.params) == (GUIDANCE, [2.5])
        client.send(command("IGNORE", GUIDANCE))
        client.send(command("LISTEN", DELTA))
        r.until(lambda: not r.query.listen.wants(GUIDANCE) and r.query.listen.wants(DELTA), "IGNORE and LISTEN")
        r.send_udp(GUIDANCE, 3.0)
        r.send_udp(DELTA, 0.25)  # applied after guidance: its packet would come second
        r.until(lambda: r.engine.preset.prompt.delta == 0.25, "delta 0.25 applied")
        assert r.engine.preset.prompt.guidance == 3.0
        message = packet(client)
        assert (message.address, message.params) == (DELTA, [0.25])  # nothing for the ignored guidance


def test_a_change_sent_over_the_websocket_goes_through_the_osc_router_and_its_rule(rig):
    r = rig()
    with r.websocket() as client:
        client.send(command("LISTEN", GUIDANCE))
        client.send(command("LISTEN", f"{NS}/error"))
        r.until(lambda: r.query.listen.wants(f"{NS}/error"), "the LISTENs arrived")
        client.send(osc(GUIDANCE, 4.0))
        r.until(lambda: r.engine.preset.prompt.guidance == 4.0, "guidance 4.0 applied")
        message = packet(client)
        assert (message.address, message.params) == (GUIDANCE, [4.0])
        client.send(osc(f"{NS}/model/id", "/tmp/weights"))  # a rebuild key: refused as over UDP
        assert packet(client).params == [
            f"{NS}/model/id: model.id is a rebuild key: refused over the network unless the preset sets "
            "osc.allow_rebuild_keys: true"
        ]
        client.send(osc(f"{NS}/preset", "../../etc/passwd"))
        assert "never a path" in packet(client).params[0]
        assert r.engine.preset.model.id == "tiny"


def _bad_messages(count: int) -> list[str | bytes]:
    """`count` messages the WebSocket layer must refuse, of every kind (a fixed seed: the same each run)."""
    rng = random.Random(15)
    good = osc(GUIDANCE, 1.0)
    makers = [
        lambda: bytes([rng.randrange(0, 0x2E)]) + rng.randbytes(rng.randrange(0, 200)),  # neither / nor #bundle
        lambda: good[: rng.choice([1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 14, 15, 17, 18, 19, 21])],  # truncated
        lambda: b"/dreamwire/prompt/guidance\x00\x00,x\x00\x00" + rng.randbytes(4),  # an unknown type tag
        lambda: "".join(rng.choice("{}[]:,\"'abc 0123") for _ in range(rng.randrange(1, 60))),  # not JSON
        lambda: json.dumps(rng.choice([[1, 2], "LISTEN", None, 3.5, {"COMMAND": "LISTEN"}])),  # not a command
        lambda: command("LISTEN", f"/nope/{rng.randrange(10**6)}"),  # an unknown path
        lambda: command(rng.choice(["FROB", "listen", ""]), GUIDANCE),  # an unknown command
    ]
    # The text alphabet has no "D", "A" or "T": no random text can be a real {"COMMAND": …, "DATA": …}.
    messages: list[str | bytes] = [rng.choice(makers)() for _ in range(count)]
    return messages


def test_a_fuzz_of_2000_bad_websocket_messages_is_refused_and_counted_and_nothing_stops(rig, caplog):
    r = rig(rendering=True)
    bad = _bad_messages(1997)
    frames = r.engine.frame_number
    with caplog.at_level(logging.WARNING):
        with r.websocket() as client:
            for message in bad:
                client.send(message)
        for _ in range(3):  # a 1 MB frame: refused, counted, and that connection closed (1009: too big)
            with r.websocket() as client:
                client.send(b"/" + bytes(2**20 - 1))
                with pytest.raises(ConnectionClosed) as closed:
                    client.recv(timeout=30)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        r.until(lambda: r.engine.status()["ws_refused"] >= 2000, "2,000 refusals counted")
    assert r.engine.status()["ws_refused"] == 2000
    assert r.engine.status()["ws_messages"] == 2000
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    # The server still serves, LISTEN still works, and the engine kept rendering throughout.
    assert _get(f"http://127.0.0.1:{r.query.port}/")[0] == 200
    with r.websocket() as client:
        client.send(command("LISTEN", GUIDANCE))
        r.until(lambda: r.query.listen.wants(GUIDANCE), "the LISTEN arrived")
        r.send_udp(GUIDANCE, 6.5)
        assert packet(client, timeout=60).params == [6.5]
    assert r.engine.frame_number > frames


def test_the_token_rule():
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert is_loopback(host) and not needs_token(host), host
    for host in ("0.0.0.0", "::", "192.168.1.20", "10.0.0.5", "stage-laptop.local"):
        assert not is_loopback(host) and needs_token(host), host
    assert token_ok(None, None) and token_ok(None, "anything")  # loopback: no token
    assert token_ok("s3cret", "s3cret")
    assert not token_ok("s3cret", None) and not token_ok("s3cret", "") and not token_ok("s3cret", "s3cre")


def test_the_origin_rule():
    pages = {8765, 9000}
    assert origin_allowed(None, "127.0.0.1:9000", pages, "127.0.0.1")  # not a browser page
    assert origin_allowed("http://127.0.0.1:8765", "127.0.0.1:9000", pages, "127.0.0.1")
    assert origin_allowed("http://localhost:8765", "localhost:9000", pages, "127.0.0.1")
    assert origin_allowed("http://[::1]:8765", "[::1]:9000", pages, "::1")
    assert not origin_allowed("http://evil.example", "127.0.0.1:9000", pages, "127.0.0.1")  # another site
    assert not origin_allowed("http://127.0.0.1:5173", "127.0.0.1:9000", pages, "127.0.0.1")  # another local app
    assert not origin_allowed("http://localhost:8765", "127.0.0.1:9000", pages, "127.0.0.1")  # another host
    # DNS rebinding: evil.example pointed at 127.0.0.1, its page on port 8765 (Origin and Host agree).
    assert not origin_allowed("http://evil.example:8765", "evil.example:9000", pages, "127.0.0.1")
    # Bound to every interface, the page on the machine's name is this instance's (the token guards changes).
    assert origin_allowed("http://stage-box:8765", "stage-box:9000", pages, "0.0.0.0")
    assert not origin_allowed("null", "127.0.0.1:9000", pages, "127.0.0.1")
    assert not origin_allowed("http://127.0.0.1:99999", "127.0.0.1:9000", pages, "127.0.0.1")  # a bad port


def test_bound_to_every_interface_changes_over_the_websocket_need_the_token(rig, caplog):
    with caplog.at_level(logging.WARNING):
        r = rig(host="0.0.0.0")  # not loopback; the test still talks over 127.0.0.1 only
    token = r.query.token
    assert token is not None and any(f"?token={token}" in record.getMessage() for record in caplog.records)
    preview = PreviewSink(port=0)  # this instance's page: the URL the engine logs carries the token
    preview.open()
    try:
        assert preview.page_url == f"{preview.url}?token={token}"
    finally:
        preview.close()
    for given in (None, "wrong", token[:-1]):
        with r.websocket(token=given) as client:
            client.send(command("LISTEN", GUIDANCE))  # reading needs no token
            client.send(osc(GUIDANCE, 5.0))
            message = packet(client)
            assert message.address == f"{NS}/error" and "need the token" in message.params[0]
    r.until(lambda: r.engine.status()["ws_refused"] == 3, "three refusals")
    assert r.engine.preset.prompt.guidance == 1.5
    with r.websocket(token=token) as client:
        client.send(command("LISTEN", GUIDANCE))
        client.send(osc(GUIDANCE, 5.0))
        r.until(lambda: r.engine.preset.prompt.guidance == 5.0, "the change with the token")
        assert packet(client).params == [5.0]


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            body = reply.read()
            return reply.status, json.loads(body) if body else None, dict(reply.headers)
    except urllib.error.HTTPError as error:
        return error.code, None, dict(error.headers)


def test_only_this_instances_pages_may_use_oscquery_from_a_browser(rig):
    r = rig()
    preview = PreviewSink(port=0)  # the page of this instance (both are named "dreamwire")
    preview.open()
    try:
        status, link, _ = _get(preview.url + "control.json")
        assert (status, link) == (200, {"oscquery_port": r.query.port})
        page = f"http://127.0.0.1:{preview.port}"
        tree_url = f"http://127.0.0.1:{r.query.port}/"
        status, tree, headers = _get(tree_url, {"Origin": page})
        assert status == 200 and tree["FULL_PATH"] == "/" and headers["Access-Control-Allow-Origin"] == page
        assert _get(tree_url, {"Origin": "http://evil.example"})[0] == 403
        rebound = {"Origin": f"http://evil.example:{preview.port}", "Host": f"evil.example:{r.query.port}"}
        assert _get(tree_url, rebound)[0] == 403
        with pytest.raises(InvalidStatus) as refused:
            r.websocket(origin=f"http://evil.example:{preview.port}")
        assert refused.value.response.status_code == 403
        with r.websocket(origin=page) as client:
            client.send(command("LISTEN", GUIDANCE))
            client.send(osc(GUIDANCE, 2.25))
            r.until(lambda: r.engine.preset.prompt.guidance == 2.25, "guidance 2.25 applied")
            assert packet(client).params == [2.25]
    finally:
        preview.close()
    status, link, _ = _get(f"http://127.0.0.1:{r.query.port}/", {"Origin": page})
    assert status == 403  # the page is gone: its port no longer belongs to this instance
