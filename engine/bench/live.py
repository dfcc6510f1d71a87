"""Live-engine benchmarks for `dreamwire bench`: frame times during prompt changes (no stall), loop
efficiency (engine fps / bare pipeline fps) and a memory soak."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import psutil

from bridges.pattern import PatternSource, pattern_image
from engine.config.schema import Preset
from engine.core.frames import Frame
from engine.live.loop import LiveEngine
from engine.pipeline.image import to_uint8
from engine.pipeline.models import Models
from engine.pipeline.stream import StreamPipeline


@dataclass
class PromptChangeTimes:
    frames: int
    prompt_changes: int
    median_ms: float
    p99_ms: float
    # The frames a change touches (the one it is sent before, the ones it is encoded during and swapped in at)
    # against the others: on a busy machine this tells a late frame that a prompt change made from one the machine
    # made (the others' p99 is as high).
    changing_p99_ms: float = 0.0
    steady_p99_ms: float = 0.0

    @property
    def p99_over_median(self) -> float:
        return self.p99_ms / self.median_ms


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


CHANGE_FRAMES = 3  # a change's frames: sent before the first, encoded during it (or the next), swapped in after


def prompt_change_frame_times(models: Models, preset: Preset, frames: int = 200, every: int = 10) -> PromptChangeTimes:
    """The engine driven frame by frame; a new, never-seen prompt every `every` frames (each one is encoded
    off the engine thread while frames keep coming). Frame time = apply_pending_controls + process."""
    engine = LiveEngine(preset, models=models)
    width, height = preset.stream.width, preset.stream.height
    changing: list[float] = []
    steady: list[float] = []
    changes = 0
    try:
        for index in range(frames + 10):
            if index >= 10 and index % every == 0:
                engine.set("prompt.text", f"{preset.prompt.text}, variation {index}")
                changes += 1
            frame = Frame(pattern_image(index, width, height), index, time.perf_counter())
            start = time.perf_counter()
            engine.apply_pending_controls()
            engine.process([frame])
            if index >= 10:  # after warm-up
                touched = index % every < CHANGE_FRAMES
                (changing if touched else steady).append(1000 * (time.perf_counter() - start))
    finally:
        engine.close()
    times = changing + steady
    return PromptChangeTimes(
        frames,
        changes,
        statistics.median(times),
        _percentile(times, 99),
        _percentile(changing, 99),
        _percentile(steady, 99),
    )


class _NullSink:
    name = "null"

    def __init__(self) -> None:
        self.frames = 0

    def open(self) -> None: ...

    def write(self, frame: Frame) -> None:
        self.frames += 1

    def close(self) -> None: ...


def bare_pipeline_fps(models: Models, preset: Preset, seconds: float) -> float:
    """The pipeline alone in a loop: load, step, host copy (what the engine does, minus the engine)."""
    stream = preset.stream
    pipeline = StreamPipeline.prepared(models, stream, preset.prompt, preset.filter)
    load = pipeline.frame_loader()
    images = [pattern_image(i, stream.width, stream.height)[None] for i in range(64)]
    for image in images[:3]:
        to_uint8(pipeline.step(load(image)))
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        to_uint8(pipeline.step(load(images[count % 64])))
        count += 1
    return count / (time.perf_counter() - start)


def engine_fps(models: Models, preset: Preset, seconds: float, source_fps: float) -> float:
    """The threaded engine: a paced pattern source (faster than the engine, so input is always waiting),
    the loop, and a sink thread."""
    engine = LiveEngine(preset, models=models)
    sink = _NullSink()
    stream = preset.stream
    engine.start_io(source=PatternSource(stream.width, stream.height, fps=source_fps), sinks=[sink])
    for _ in range(3):  # warm-up
        engine.apply_pending_controls()
        engine.step()
    first, start = engine.frame_number, time.perf_counter()
    try:
        while time.perf_counter() - start < seconds:
            engine.apply_pending_controls()
            engine.step()
    finally:
        elapsed = time.perf_counter() - start
        engine.close()
    return (engine.frame_number - first) / elapsed


def loop_efficiency(models: Models, preset: Preset, seconds: float = 4.0) -> dict[str, float]:
    bare = bare_pipeline_fps(models, preset, seconds)
    live = engine_fps(models, preset, seconds, source_fps=2 * bare)
    return {"bare_pipeline_fps": bare, "engine_fps": live, "efficiency": live / bare}


def _rss_mb() -> float:
    """Resident memory of this process in MiB, the same measure on Linux, macOS and Windows (working set)."""
    return psutil.Process().memory_info().rss / 2**20


def memory_soak(models: Models, preset: Preset, frames: int, warmup: int = 500) -> dict[str, Any]:
    """Process `frames` frames through the engine (with a prompt change every 100); RSS after warm-up vs at
    the end, and the peak in between."""
    engine = LiveEngine(preset, models=models)
    width, height = preset.stream.width, preset.stream.height
    images = [pattern_image(i, width, height) for i in range(64)]
    start_rss = peak = 0.0
    try:
        for index in range(frames):
            if index % 100 == 50:
                engine.set("prompt.text", f"{preset.prompt.text} {index % 700}")  # cache hits after 7 distinct
            engine.apply_pending_controls()
            engine.process([Frame(images[index % 64], index, time.perf_counter())])
            if index == warmup:
                start_rss = _rss_mb()
            if index > warmup and index % 250 == 0:
                peak = max(peak, _rss_mb())
        end_rss = _rss_mb()
    finally:
        engine.close()
    return {
        "frames": frames,
        "rss_after_warmup_mb": start_rss,
        "rss_end_mb": end_rss,
        "rss_peak_mb": max(peak, end_rss),
        "growth_mb": end_rss - start_rss,
    }
