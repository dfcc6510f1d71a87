"""Tempo benchmarks for `dreamwire bench`, on the engine loop running on its own thread as `dreamwire run` has it:

- landing: how far after its beat (minus `tempo.latency_ms`) a change marked "next beat" is applied, over changes
  sent at random moments; it should be applied by the first frame boundary after that moment (so less than that
  frame's time late: on a loaded machine frame times vary), and never before;
- modulators: the frame time with 8 LFOs running (on five parameters, three in layers) against none, in
  interleaved rounds, and the engine thread's time in the LFOs per frame.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from itertools import pairwise
from typing import Any

from bridges.pattern import PatternSource
from engine.config.schema import Preset
from engine.live.events import EngineEvent
from engine.live.loop import LiveEngine
from engine.live.modulators import check_lfo
from engine.pipeline.models import Models

BPM = 240.0  # a beat every 0.25 s: many beats in a short bench
LATENCY_MS = 20.0
EIGHT_LFOS = (
    ("prompt.guidance", "sine", 1.0, "beats", 0.5, 0),
    ("prompt.guidance", "triangle", 1.0, "bars", 0.3, 1),
    ("prompt.guidance", "random", 0.5, "beats", 0.2, 2),
    ("prompt.delta", "saw", 2.0, "beats", 0.4, 0),
    ("prompt.delta", "square", 0.5, "hz", 0.1, 1),
    ("filter.threshold", "sine", 1.0, "bars", 0.01, 0),
    ("filter.max_skip_frames", "triangle", 2.0, "bars", 2.0, 0),
    ("prompt.seed", "random", 4.0, "bars", 3.0, 0),
)


class _Loop:
    """The engine on its own thread, an unpaced pattern source (a frame always waiting), no sinks."""

    def __init__(self, models: Models, preset: Preset) -> None:
        config = preset.model_copy(deep=True)
        config.tempo = config.tempo.model_copy(update={"bpm": BPM, "latency_ms": LATENCY_MS, "quantize": "none"})
        config.io.outputs = []
        self.engine = LiveEngine(config, models=models)
        self.applied: dict[int, float] = {}  # request id → when the engine applied it (perf_counter)
        self._changed = threading.Condition()  # waited on, not polled: a polling thread would slow the engine
        self.frames: list[float] = []  # when each step published frames
        self.boundaries: list[float] = []  # when each frame boundary (apply_pending_controls) began
        self.engine.add_listener(self._on_event)
        self.engine.add_frame_listener(lambda number, at: self.frames.append(at))
        stream = config.stream
        self.engine.start_io(source=PatternSource(stream.width, stream.height, fps=0), sinks=[])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-tempo-engine")
        self._thread.start()

    def _on_event(self, event: EngineEvent) -> None:
        if event.kind == "applied":
            self.applied[event.request_id] = time.perf_counter()
            with self._changed:
                self._changed.notify_all()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.boundaries.append(time.perf_counter())
            self.engine.apply_pending_controls()
            self.engine.step()

    def wait(self, request_id: int, timeout: float = 30.0) -> float:
        with self._changed:
            if not self._changed.wait_for(lambda: request_id in self.applied, timeout):
                raise TimeoutError(f"request {request_id} was not applied in {timeout} s")
        return self.applied[request_id]

    def frame_times_ms(self, frames: int) -> list[float]:
        start = len(self.frames)
        while len(self.frames) < start + frames + 1:
            time.sleep(0.05)
        stamps = self.frames[start : start + frames + 1]
        return [(b - a) * 1000.0 for a, b in pairwise(stamps)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.engine.close()


def tempo_benchmarks(models: Models, preset: Preset, changes: int = 16, frames: int = 48, seed: int = 0) -> dict:
    rng = random.Random(seed)
    loop = _Loop(models, preset)
    try:
        clock = loop.engine.tempo.clock
        loop.frame_times_ms(3)  # warm-up
        late_ms, late_of_frame, missed = [], [], 0
        for index in range(changes):
            time.sleep(rng.uniform(0.0, 60.0 / BPM))  # a random moment within a beat
            target = clock.next_boundary("beat")
            request_id = loop.engine.set("prompt.guidance", 1.0 + 0.01 * index, quantize="beat")
            applied = loop.wait(request_id)
            assert target is not None
            due = clock.time_of(target) - LATENCY_MS / 1000.0
            late_ms.append((applied - due) * 1000.0)
            # The boundary that applied it, the one before the due moment, and any boundary in between (a miss).
            applying = max(b for b in loop.boundaries if b <= applied)
            before = max((b for b in loop.boundaries if b < due), default=due)
            missed += sum(1 for b in loop.boundaries if due <= b < applying)
            late_of_frame.append((applying - due) / (applying - before) if applying > before else 0.0)
        landing = {
            "changes": changes,
            "bpm": BPM,
            "latency_ms": LATENCY_MS,
            "late_median_ms": statistics.median(late_ms),
            "late_max_ms": max(late_ms),
            "late_max_share_of_frame": max(late_of_frame),  # after the due moment, as a share of that frame: < 1
            "early": sum(1 for late in late_ms if late < 0),
            "missed_boundaries": missed,  # a boundary at or after the due moment that did not apply it: 0
            "frame_median_ms": statistics.median(loop.frame_times_ms(frames // 2)),
        }
        modulators = loop.engine.tempo.modulators
        spent: list[float] = []
        apply = modulators.apply

        def timed(*args: Any) -> None:  # bench only: the engine thread's time in the LFOs
            start = time.perf_counter()
            apply(*args)
            spent.append(time.perf_counter() - start)

        modulators.apply = timed  # type: ignore[method-assign]
        off, on = [], []
        for _ in range(4):  # interleaved rounds: drift in the machine's load hits both alike
            modulators.clear()
            off += loop.frame_times_ms(frames // 4)
            for path, shape, rate, unit, depth, layer in EIGHT_LFOS:
                modulators.set(check_lfo(path, shape, rate, unit, depth, layer=layer))
            spent.clear()
            on += loop.frame_times_ms(frames // 4)
        lfo_us = statistics.median(spent) * 1e6 if spent else 0.0
        modulators.clear()
        return {
            "landing": landing,
            "modulators": {
                "lfos": len(EIGHT_LFOS),
                "frame_median_ms_without": statistics.median(off),
                "frame_median_ms_with_8": statistics.median(on),
                "ratio": statistics.median(on) / statistics.median(off),
                "lfo_apply_median_us": lfo_us,
            },
        }
    finally:
        loop.close()


def format_tempo(result: dict[str, Any]) -> str:
    landing, mods = result["landing"], result["modulators"]
    return (
        f"quantised changes: {landing['changes']} marked 'next beat' at {landing['bpm']:.0f} bpm landed "
        f"{landing['late_median_ms']:.1f} ms (median), {landing['late_max_ms']:.1f} ms (max) after beat − "
        f"{landing['latency_ms']:.0f} ms lookahead: at the first frame boundary after it "
        f"({landing['missed_boundaries']} boundaries missed, at most {landing['late_max_share_of_frame']:.2f} of "
        f"that frame late), {landing['early']} early; frame {landing['frame_median_ms']:.1f} ms\n"
        f"modulators: frame median {mods['frame_median_ms_without']:.1f} ms without, "
        f"{mods['frame_median_ms_with_8']:.1f} ms with {mods['lfos']} LFOs ({mods['ratio']:.2f}x); "
        f"LFOs {mods['lfo_apply_median_us']:.0f} µs a frame on the engine thread"
    )
