"""OSC benchmarks for `dreamwire bench`, through a real UDP socket, the OSC server thread and the engine loop on
its own thread (as `dreamwire run` has them):

- latency: a datagram sent → the parameter applied at the next frame boundary (p50/p99 over many changes, sent
  at random moments relative to the frames); the target is p99 < one frame time + 2 ms, checked message by
  message against the frame that was in progress when it was sent (frame times vary);
- burst: output fps while 2,000 messages arrive within a second, against fps without them.
"""

from __future__ import annotations

import bisect
import random
import socket
import struct
import threading
import time
from typing import Any

import numpy as np

from bridges.pattern import PatternSource
from engine.commands.bench_live import _NullSink
from engine.config.schema import OscConfig, Preset
from engine.control.osc import OscTransport
from engine.live.controls import Control, SetValue
from engine.live.loop import LiveEngine
from engine.pipeline.models import Models

ADDRESS = "/dreamwire/prompt/guidance"


class _StampedEngine(LiveEngine):
    """Records, for each guidance value, when the OSC server handed it to the engine and when the engine applied
    it, and when each frame boundary (apply_pending_controls) began (bench only)."""

    queued: dict[float, float]
    applied: dict[float, float]
    boundaries: list[float]

    def set(self, path: str, value: Any, seconds: float | None = None, frames: int | None = None) -> None:
        if path == "prompt.guidance":
            self.queued[float(value)] = time.perf_counter()  # before the put, so never after the apply
        super().set(path, value, seconds, frames)

    def apply_pending_controls(self) -> None:
        self.boundaries.append(time.perf_counter())
        super().apply_pending_controls()

    def _apply(self, control: Control) -> None:
        super()._apply(control)
        if isinstance(control, SetValue) and control.path == "prompt.guidance":
            self.applied[control.value] = time.perf_counter()


class _Rig:
    def __init__(self, models: Models, preset: Preset) -> None:
        config = preset.model_copy(deep=True)
        config.osc = OscConfig(port=0, query_port=0, feedback="", status_hz=0.0)
        self.engine = _StampedEngine(config, models=models)
        self.engine.queued, self.engine.applied, self.engine.boundaries = {}, {}, []
        self.surface = OscTransport.alone(self.engine, config.osc, discovery=False)
        assert self.surface.server is not None
        self.target = ("127.0.0.1", self.surface.server.port)
        self.client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stream = config.stream
        # A source faster than the engine, so that a frame is always waiting (frame time = the engine's own).
        self.engine.start_io(source=PatternSource(stream.width, stream.height, fps=0), sinks=[_NullSink()])
        self._stop = threading.Event()
        self._loop = threading.Thread(target=self._run, name="bench-engine")
        self._loop.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.engine.apply_pending_controls()
            self.engine.step()

    def send(self, value: float) -> float:
        data = _message(ADDRESS, value)
        sent = time.perf_counter()
        self.client.sendto(data, self.target)
        return sent

    def frames_in(self, seconds: float) -> float:
        """Output frames per second over `seconds` of wall time."""
        first, start = self.engine.frame_number, time.perf_counter()
        time.sleep(seconds)
        return (self.engine.frame_number - first) / (time.perf_counter() - start)

    def close(self) -> None:
        self._stop.set()
        self._loop.join()
        self.client.close()
        self.surface.close()
        self.engine.close()


def _message(address: str, value: float) -> bytes:
    """One OSC message with one float argument (built by hand: the bench measures our server, not a client)."""
    name = address.encode() + b"\x00"
    name += b"\x00" * (-len(name) % 4)
    return name + b",f\x00\x00" + struct.pack(">f", value)


def _float32(value: float) -> float:
    return float(np.float32(value))


def osc_benchmarks(models: Models, preset: Preset, messages: int = 200, seed: int = 0) -> dict[str, Any]:
    rig = _Rig(models, preset)
    engine, rng = rig.engine, random.Random(seed)
    try:
        while engine.frame_number < 5:  # warm-up
            time.sleep(0.01)
        first_boundary = len(engine.boundaries)
        sent: dict[float, float] = {}
        for index in range(messages):
            value = _float32(0.5 + 0.01 * index)
            sent[value] = rig.send(value)
            time.sleep(rng.uniform(0.002, 0.03))  # at random moments relative to the frames
        deadline = time.perf_counter() + 30
        while len(engine.applied) < messages and time.perf_counter() < deadline:
            time.sleep(0.01)
        boundaries = engine.boundaries[first_boundary:]
        quiet_fps = rig.frames_in(1.0)
        burst_fps, burst_seconds = _burst_fps(rig, 2000)
    finally:
        rig.close()
    done = [v for v in sent if v in engine.applied and v in engine.queued]
    latency = [1000 * (engine.applied[v] - sent[v]) for v in done]
    osc = [1000 * (engine.queued[v] - sent[v]) for v in done]  # what the OSC path adds before the frame boundary
    frames = np.diff(boundaries) * 1000
    # Against the frame in progress when the message was sent (frame times vary, on a shared CPU a lot): latency
    # minus that frame's duration is at most the OSC path's own time when the change makes the next boundary.
    excess, next_boundary = [], 0
    for v in done:
        before, after = _around(boundaries, sent[v])
        if before is None or after is None:
            continue
        excess.append(1000 * (engine.applied[v] - sent[v]) - 1000 * (after - before))
        next_boundary += engine.applied[v] < _following(boundaries, after)
    return {
        "messages": messages,
        "applied": len(done),
        "applied_at_next_boundary": next_boundary,
        "p50_ms": _percentile(latency, 50),
        "p99_ms": _percentile(latency, 99),
        "max_ms": max(latency, default=float("nan")),
        "osc_p50_ms": _percentile(osc, 50),
        "osc_p99_ms": _percentile(osc, 99),
        "frame_ms": float(np.median(frames)),
        "frame_p99_ms": _percentile(list(frames), 99),
        "excess_p99_ms": _percentile(excess, 99),
        "met": _percentile(excess, 99) < 2.0,
        "fps_quiet": quiet_fps,
        "fps_during_burst": burst_fps,
        "burst_seconds": burst_seconds,
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


def _burst_fps(rig: _Rig, count: int) -> tuple[float, float]:
    """Output fps while `count` messages are sent within about a second; and how long sending took."""
    first, start = rig.engine.frame_number, time.perf_counter()
    for index in range(count):
        rig.send(_float32(3.0 + 0.001 * (index % 1000)))
        if index % 100 == 99:
            time.sleep(max(0.0, start + (index + 1) / (count * 1.1) - time.perf_counter()))
    sending = time.perf_counter() - start
    time.sleep(max(0.0, 1.0 - sending))
    return (rig.engine.frame_number - first) / (time.perf_counter() - start), sending


def format_osc(result: dict[str, Any]) -> str:
    return (
        f"OSC receipt → applied at the next frame boundary: p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f}"
        f" ms (max {result['max_ms']:.2f}); {result['applied_at_next_boundary']}/{result['messages']} applied at the"
        f" first boundary after they were sent; frame time median {result['frame_ms']:.2f} ms, p99"
        f" {result['frame_p99_ms']:.2f} ms. Latency − the frame in progress when sent: p99"
        f" {result['excess_p99_ms']:.2f} ms (target < 2 ms: {'met' if result['met'] else 'NOT met'}). The OSC path"
        f" alone (send → queued for the engine): p50 {result['osc_p50_ms']:.2f} ms, p99 {result['osc_p99_ms']:.2f} ms\n"
        f"OSC burst: {result['fps_quiet']:.1f} fps quiet, {result['fps_during_burst']:.1f} fps while 2000 messages"
        f" arrived in {result['burst_seconds']:.2f} s"
    )
