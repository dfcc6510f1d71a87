"""OSC benchmarks for `dreamwire bench`, through a real UDP socket, the OSC server thread and the engine loop on
its own thread (as `dreamwire run` has them):

- latency: a datagram sent → the parameter applied at the next frame boundary (p50/p99 over many changes, sent
  at random moments relative to the frames); the target is p99 < one frame time + 2 ms, checked message by
  message against the frame that was in progress when it was sent (frame times vary);
- burst: output fps while 2,000 messages arrive within a second, against fps without them, and the longest frame
  gap from the burst's start until it is drained, as a ratio to the quiet frame time (the issue's bound: 3);
- flood: the same gap ratio while four sockets send 2,000 messages each as fast as they can, a message to each
  of four addresses in turn (an OSC Out CHOP), from a process of their own as controllers are.
"""

from __future__ import annotations

import bisect
import itertools
import random
import socket
import struct
import subprocess
import sys
import time
from typing import Any

import numpy as np

from engine.config.schema import OscConfig, Preset
from engine.control.osc import OscTransport
from engine.core.supervisor import spawn
from engine.live.events import EngineEvent
from engine.live.loop import LiveEngine
from engine.pipeline.models import Models

ADDRESS = "/dreamwire/prompt/guidance"


class _Rig:
    """The engine running on its own thread as in `dreamwire run` (an unpaced pattern source, so a frame is always
    waiting and frame time is the engine's own), its OSC surface on a real UDP port, and the times the engine's two
    hooks report: each frame boundary (an output published: the next controls are applied right after it) and each
    guidance value applied."""

    def __init__(self, models: Models, preset: Preset) -> None:
        config = preset.model_copy(deep=True)
        config.osc = OscConfig(port=0, query_port=0, feedback="", status_hz=0.0)
        stream = config.stream
        config.io.input = f"pattern:?width={stream.width}&height={stream.height}&fps=0"
        config.io.outputs = []
        self.engine = engine = LiveEngine(config, models=models)
        self.boundaries: list[float] = []  # perf_counter seconds, appended on the engine thread
        self.applied: dict[float, float] = {}  # guidance value -> perf_counter seconds when it was applied
        self.frames = 0  # output frames produced so far
        engine.add_frame_listener(self._on_frame)
        engine.add_listener(self._on_event)
        self.surface = OscTransport.alone(engine, config.osc, discovery=False)
        assert self.surface.server is not None
        self.target = ("127.0.0.1", self.surface.server.port)
        self.client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._loop = spawn("dreamwire-bench-engine", lambda _stop: engine.run(), restart=False)

    def _on_frame(self, frame_number: int, now: float) -> None:
        self.frames = frame_number
        self.boundaries.append(now)

    def _on_event(self, event: EngineEvent) -> None:
        if event.kind == "applied" and event.path == "prompt.guidance":
            self.applied[float(event.value)] = time.perf_counter()

    def send(self, value: float) -> float:
        data = _message(ADDRESS, value)
        sent = time.perf_counter()
        self.client.sendto(data, self.target)
        return sent

    def frames_in(self, seconds: float) -> float:
        """Output frames per second over `seconds` of wall time."""
        first, start = self.frames, time.perf_counter()
        time.sleep(seconds)
        return (self.frames - first) / (time.perf_counter() - start)

    def close(self) -> None:
        self.engine.stop()
        self._loop.stop(timeout=None)  # run() closes the engine on its way out
        self.client.close()
        self.surface.close()


def _message(address: str, value: float) -> bytes:
    """One OSC message with one float argument (built by hand: the bench measures our server, not a client)."""
    name = address.encode() + b"\x00"
    name += b"\x00" * (-len(name) % 4)
    return name + b",f\x00\x00" + struct.pack(">f", value)


def _float32(value: float) -> float:
    return float(np.float32(value))


def osc_benchmarks(models: Models, preset: Preset, messages: int = 200, seed: int = 0) -> dict[str, Any]:
    rig = _Rig(models, preset)
    rng = random.Random(seed)
    try:
        while rig.frames < 5:  # warm-up
            time.sleep(0.01)
        first_boundary = len(rig.boundaries)
        sent: dict[float, float] = {}
        for index in range(messages):
            value = _float32(0.5 + 0.01 * index)
            sent[value] = rig.send(value)
            time.sleep(rng.uniform(0.002, 0.03))  # at random moments relative to the frames
        deadline = time.perf_counter() + 30
        while len(rig.applied) < messages and time.perf_counter() < deadline:
            time.sleep(0.01)
        boundaries = rig.boundaries[first_boundary:]
        quiet_first = len(rig.boundaries)
        quiet_fps = rig.frames_in(1.0)
        quiet_frame = float(np.median(np.diff(rig.boundaries[quiet_first:])))
        burst_fps, burst_seconds, burst_gap = _burst_fps(rig, 2000)
        flood_gap, flood_coalesced = _flood_gap(rig)
    finally:
        rig.close()
    done = [v for v in sent if v in rig.applied]
    latency = [1000 * (rig.applied[v] - sent[v]) for v in done]
    frames = np.diff(boundaries) * 1000
    # Against the frame in progress when the message was sent (frame times vary, on a shared CPU a lot): latency
    # minus that frame's duration is at most the OSC path's own time when the change makes the next boundary.
    excess, next_boundary = [], 0
    for v in done:
        before, after = _around(boundaries, sent[v])
        if before is None or after is None:
            continue
        excess.append(1000 * (rig.applied[v] - sent[v]) - 1000 * (after - before))
        next_boundary += rig.applied[v] < _following(boundaries, after)
    return {
        "messages": messages,
        "applied": len(done),
        "applied_at_next_boundary": next_boundary,
        "p50_ms": _percentile(latency, 50),
        "p99_ms": _percentile(latency, 99),
        "max_ms": max(latency, default=float("nan")),
        "frame_ms": float(np.median(frames)),
        "frame_p99_ms": _percentile(list(frames), 99),
        "excess_p99_ms": _percentile(excess, 99),
        "met": _percentile(excess, 99) < 2.0,
        "fps_quiet": quiet_fps,
        "fps_during_burst": burst_fps,
        "burst_seconds": burst_seconds,
        "quiet_frame_ms": 1000 * quiet_frame,
        "burst_worst_gap_ratio": burst_gap / quiet_frame,
        "flood_worst_gap_ratio": flood_gap / quiet_frame,
        "flood_coalesced": flood_coalesced,
    }


def _around(boundaries: list[float], t: float) -> tuple[float | None, float | None]:
    """The frame boundaries just before and just after time t."""
    index = bisect.bisect_right(boundaries, t)
    before = boundaries[index - 1] if index > 0 else None
    after = boundaries[index] if index < len(boundaries) else None
    return before, after


def _following(boundaries: list[float], boundary: float) -> float:
    index = bisect.bisect_right(boundaries, boundary)
    return boundaries[index] if index < len(boundaries) else float("inf")


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _burst_fps(rig: _Rig, count: int) -> tuple[float, float, float]:
    """Output fps while `count` messages are sent within about a second; how long sending took; and the longest
    frame gap (seconds) from the first message until 5 frames after the last one was applied."""
    first, start = rig.frames, time.perf_counter()
    for index in range(count):
        rig.send(_float32(3.0 + 0.001 * (index % 1000)))
        if index % 100 == 99:
            time.sleep(max(0.0, start + (index + 1) / (count * 1.1) - time.perf_counter()))
    sending = time.perf_counter() - start
    time.sleep(max(0.0, 1.0 - sending))
    fps = (rig.frames - first) / (time.perf_counter() - start)
    return fps, sending, _worst_gap(rig, start)


def _worst_gap(rig: _Rig, start: float, frames_after: int = 5) -> float:
    """The longest gap between frame boundaries from `start` on, once `frames_after` more frames came."""
    target, deadline = len(rig.boundaries) + frames_after, time.perf_counter() + 30
    while len(rig.boundaries) < target and time.perf_counter() < deadline:
        time.sleep(0.01)
    stamps = [start, *(t for t in rig.boundaries if t > start)]
    return max(b - a for a, b in itertools.pairwise(stamps))


# Four controllers as four sockets in one process of their own (argv: the port): the datagrams come as hex lines
# on stdin up to an empty line, then "go" is stdin's end.
_FLOOD_SENDER = """
import socket, sys
datagrams = [bytes.fromhex(line) for line in iter(sys.stdin.readline, "\\n")]
sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
for out in sockets:
    out.connect(("127.0.0.1", int(sys.argv[1])))
print("ready", flush=True)
sys.stdin.read()  # go
for datagram in datagrams:
    for out in sockets:
        out.send(datagram)
"""
_FLOOD_CHANNELS = (
    (ADDRESS, 1.2),
    ("/dreamwire/prompt/delta", 0.5),
    ("/dreamwire/filter/threshold", 0.9),
    ("/dreamwire/strength", 0.5),
)  # (address, lowest value): an OSC Out CHOP's channels


def _flood_gap(rig: _Rig, count: int = 2000) -> tuple[float, int]:
    """The longest frame gap (seconds) while four sockets send `count` messages each, as fast as they can, until
    the server has read them all and 5 more frames came; and how many the server coalesced."""
    server = rig.surface.server
    assert server is not None
    datagrams = []
    for index in range(count):
        address, low = _FLOOD_CHANNELS[index % len(_FLOOD_CHANNELS)]
        datagrams.append(_message(address, _float32(low + 0.001 * (index % 100))))
    sender = subprocess.Popen(
        [sys.executable, "-c", _FLOOD_SENDER, str(server.port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert sender.stdin is not None and sender.stdout is not None
    sender.stdin.write(b"".join(d.hex().encode() + b"\n" for d in datagrams) + b"\n")
    sender.stdin.flush()
    assert sender.stdout.readline() == b"ready\n"
    datagrams_before, coalesced_before = server.datagrams, server.coalesced
    start = time.perf_counter()
    sender.stdin.close()  # go
    sender.wait(60)
    deadline = time.perf_counter() + 30
    while server.datagrams - datagrams_before < 4 * count and time.perf_counter() < deadline:
        time.sleep(0.01)
    return _worst_gap(rig, start), server.coalesced - coalesced_before


def format_osc(result: dict[str, Any]) -> str:
    return (
        f"OSC receipt → applied at the next frame boundary: p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f}"
        f" ms (max {result['max_ms']:.2f}); {result['applied_at_next_boundary']}/{result['messages']} applied at the"
        f" first boundary after they were sent; frame time median {result['frame_ms']:.2f} ms, p99"
        f" {result['frame_p99_ms']:.2f} ms. Latency − the frame in progress when sent: p99"
        f" {result['excess_p99_ms']:.2f} ms (target < 2 ms: {'met' if result['met'] else 'NOT met'})\n"
        f"OSC burst: {result['fps_quiet']:.1f} fps quiet, {result['fps_during_burst']:.1f} fps while 2000 messages"
        f" arrived in {result['burst_seconds']:.2f} s; longest frame gap {result['burst_worst_gap_ratio']:.2f} quiet"
        f" frame times ({result['quiet_frame_ms']:.1f} ms)\n"
        f"OSC flood (4 senders x 2000, 4 addresses interleaved): longest frame gap"
        f" {result['flood_worst_gap_ratio']:.2f} quiet frame times (target <= 3); {result['flood_coalesced']} of 8000"
        f" coalesced"
    )
