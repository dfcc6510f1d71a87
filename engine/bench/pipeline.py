"""`dreamwire bench`'s pipeline part: fps, UNet rows per frame and per-frame overhead, all measured in one run, so
the ratios (self vs full CFG, Stream Batch vs sequential) compare like with like.

Model time is measured by wrapping the UNet backend and the VAE codec with timers (synchronising the
device inside the wrappers: bench only, never the engine); overhead = frame time − model time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bridges.pattern import pattern_image
from engine.config.schema import Preset
from engine.pipeline.image import to_unit_range
from engine.pipeline.models import Models
from engine.pipeline.stream import StreamPipeline

log = logging.getLogger(__name__)
WARMUP_FRAMES = 3


@dataclass
class Measurement:
    name: str
    fps: float
    unet_rows_per_frame: float
    model_ms: float  # UNet + VAE, per frame
    overhead_ms: float  # everything else in a frame: preprocessing, tables, buffers, CFG, output copy
    skip_rate: float = 0.0
    note: str = ""


class _Timed:
    """Wraps a callable, adding its wall time (device-synchronised) and a row count."""

    def __init__(self, inner: Callable[..., torch.Tensor], device: torch.device) -> None:
        self.inner, self.device = inner, device
        self.seconds, self.rows, self.calls = 0.0, 0, 0

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        _sync(self.device)
        start = time.perf_counter()
        out = self.inner(x, *args, **kwargs)
        _sync(self.device)
        self.seconds += time.perf_counter() - start
        self.rows += x.shape[0]
        self.calls += 1
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Instant(_Timed):
    """A model call answered instantly with its first result: what is left of a frame is pure overhead."""

    cached: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.cached is None:
            self.cached = self.inner(x, *args, **kwargs)
        self.rows += x.shape[0]
        self.calls += 1
        return self.cached


class _Run:
    """One benchmarked configuration: its pipeline with timed model calls, advanced a few frames at a time."""

    def __init__(
        self, models: Models, preset: Preset, name: str, static: bool = False, models_stubbed: bool = False
    ) -> None:
        stream = preset.stream
        self.name, self.device, self.frames_per_step = name, models.device, stream.frame_buffer_size
        self.pipeline = pipeline = StreamPipeline.prepared(models, stream, preset.prompt, preset.filter)
        wrap = _Instant if models_stubbed else _Timed
        self.unet = pipeline.unet = wrap(pipeline.unet, models.device)
        self.encode = pipeline.codec.encode = wrap(pipeline.codec.encode, models.device)  # type: ignore[method-assign]
        self.decode = pipeline.codec.decode = wrap(pipeline.codec.decode, models.device)  # type: ignore[method-assign]
        self.load = pipeline.frame_loader()
        self.txt2img = stream.mode != "img2img"
        self.width, self.height = stream.width, stream.height
        self.static, self.models_stubbed = static, models_stubbed
        self.index, self.steps, self.seconds = 0, 0, 0.0
        self.advance(WARMUP_FRAMES)
        for timer in (self.unet, self.encode, self.decode):
            timer.seconds, timer.rows, timer.calls = 0.0, 0, 0
        self.steps, self.seconds = 0, 0.0

    def advance(self, steps: int) -> None:
        f = self.frames_per_step
        groups = []
        for _ in range(steps):
            indices = [0 if self.static else self.index + i for i in range(f)]
            groups.append(np.stack([pattern_image(i, self.width, self.height) for i in indices]))
            self.index += f
        _sync(self.device)
        start = time.perf_counter()
        for group in groups:
            image = None if self.txt2img else self.load(group)
            to_unit_range(self.pipeline.step(image)).float().cpu().numpy()  # the host copy a sink makes
        _sync(self.device)
        self.seconds += time.perf_counter() - start
        self.steps += steps

    def result(self) -> Measurement:
        output_frames = self.steps * self.frames_per_step
        model_seconds = self.unet.seconds + self.encode.seconds + self.decode.seconds
        return Measurement(
            name=self.name,
            fps=output_frames / self.seconds,
            unet_rows_per_frame=self.unet.rows / output_frames,
            model_ms=1000 * model_seconds / output_frames,
            overhead_ms=1000 * (self.seconds - model_seconds) / output_frames,
            skip_rate=1.0 - self.encode.calls / self.steps,
            note="model calls stubbed out" if self.models_stubbed else "",
        )


def measure_interleaved(runs: list[_Run], frames: int, rounds: int = 4) -> list[Measurement]:
    """Advance every run a few frames at a time, in turn, so that a slow spell of a shared machine hits
    all of them alike and the ratios between them hold."""
    per_round = max(1, frames // rounds)
    for _ in range(rounds):
        for run in runs:
            run.advance(per_round)
    return [run.result() for run in runs]


def _variant(preset: Preset, **changes: Any) -> Preset:
    data = preset.model_dump()
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        data[section][key] = value
    return Preset.model_validate(data)


def run_measurements(models: Models, preset: Preset, frames: int) -> list[Measurement]:
    n, cfg = len(preset.stream.t_index_list), preset.stream.cfg_type
    batch = [
        _Run(models, _variant(preset, stream__use_denoising_batch=True), f"stream batch (cfg {cfg}, n={n})"),
        _Run(models, _variant(preset, stream__use_denoising_batch=False), f"sequential (cfg {cfg}, n={n})"),
    ]
    # CFG at 512x512, the size users run: there the UNet dominates the frame as it does for real models.
    big = _variant(preset, stream__width=512, stream__height=512, stream__use_denoising_batch=True)
    guidance = max(preset.prompt.guidance, 1.2)  # guidance <= 1 would turn full/initialize into none
    cfgs = [
        _Run(models, _variant(big, stream__cfg_type=c, prompt__guidance=guidance), f"cfg {c} (g={guidance}, 512x512)")
        for c in ("none", "self", "initialize", "full")
    ]
    on = _variant(preset, filter__enabled=True)
    ssf = [
        _Run(models, on, "ssf on, static input", static=True),
        _Run(models, on, "ssf on, changing input", static=False),
    ]
    overhead = [_Run(models, big, "overhead (512x512, models stubbed)", models_stubbed=True)]
    return (
        measure_interleaved(batch, frames)
        + measure_interleaved(cfgs, max(8, frames // 3))
        + measure_interleaved(ssf, frames)
        + measure_interleaved(overhead, frames * 4, rounds=1)
    )


def format_table(results: list[Measurement]) -> str:
    lines = [f"{'measurement':<34} {'fps':>8} {'unet rows/frame':>16} {'model ms':>9} {'overhead ms':>12} {'skip':>6}"]
    for r in results:
        lines.append(
            f"{r.name:<34} {r.fps:>8.1f} {r.unet_rows_per_frame:>16.2f} {r.model_ms:>9.2f} {r.overhead_ms:>12.2f}"
            f" {r.skip_rate:>6.0%}"
        )
    return "\n".join(lines)


def ratios(results: list[Measurement]) -> dict[str, float]:
    by_name = {r.name.split(" (")[0]: r for r in results}
    cfg = {r.name.split(" (")[0].removeprefix("cfg "): r for r in results if r.name.startswith("cfg ")}
    return {
        "self_vs_full_fps": cfg["self"].fps / cfg["full"].fps,
        "stream_batch_vs_sequential_fps": by_name["stream batch"].fps / by_name["sequential"].fps,
    }


def load_device_name(preset: Preset) -> str:
    from engine.pipeline.models import resolve_device

    device, dtype = resolve_device(preset.model.device, preset.model.dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return f"{name} ({dtype})"
