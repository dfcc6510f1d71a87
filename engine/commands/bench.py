"""`dreamwire bench`: fps, UNet rows per frame and per-frame overhead, all measured in one run, so the
ratios (self vs full CFG, Stream Batch vs sequential, ours vs the reference) compare like with like.

Model time is measured by wrapping the UNet backend and the VAE codec with timers (synchronising the
device inside the wrappers: bench only, never the engine); overhead = frame time − model time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bridges.pattern import pattern_image
from engine.config.schema import Preset
from engine.core.errors import DreamwireError
from engine.pipeline.image import to_unit_range
from engine.pipeline.models import Models, load_models
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

    def __call__(self, x: torch.Tensor, *args: Any) -> torch.Tensor:
        _sync(self.device)
        start = time.perf_counter()
        out = self.inner(x, *args)
        _sync(self.device)
        self.seconds += time.perf_counter() - start
        self.rows += x.shape[0]
        self.calls += 1
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _frames(width: int, height: int, count: int) -> Iterator[np.ndarray]:
    for index in range(count):
        yield pattern_image(index, width, height)


class _Instant(_Timed):
    """A model call answered instantly with its first result: what is left of a frame is pure overhead."""

    cached: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, *args: Any) -> torch.Tensor:
        if self.cached is None:
            self.cached = self.inner(x, *args)
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


def _reference_script(explicit: str | None) -> Path:
    candidates = [explicit] if explicit else []
    candidates += [os.environ.get("DREAMWIRE_REFERENCE_SCRIPT", "")]
    root = Path(__file__).resolve().parents[1]
    candidates += [str(root.parent / "shared" / "tools" / "reference" / "run_reference.py")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise DreamwireError(
        f"run_reference.py not found (tried {', '.join(c for c in candidates if c)}); pass --reference-script"
    )


def reference_side_by_side(
    preset: Preset, python: str, script: str | None, frames: int, repeats: int = 5
) -> dict[str, Any]:
    """Run the reference StreamDiffusion (run_reference.py) and ours (engine/commands/clip_run.py, same command line)
    over the same clip, model and settings, each in a fresh process, taking turns `repeats` times so that a
    shared machine's slow spells hit both; report the median fps of each (over the clip after its first frame,
    as the reference script times itself) and the largest output difference."""
    from engine.pipeline.tiny import TINY_MODEL_ID, TINY_VAE_ID, save_tiny_pipeline, save_tiny_taesd

    stream, prompt = preset.stream, preset.prompt
    if stream.frame_buffer_size != 1 or stream.mode != "img2img":
        raise DreamwireError("the reference comparison needs frame_buffer_size 1 and img2img")
    with tempfile.TemporaryDirectory(prefix="dreamwire-ref-") as folder:
        work = Path(folder)
        model_dir = save_tiny_pipeline(work / "model") if preset.model.id == TINY_MODEL_ID else Path(preset.model.id)
        settings: dict[str, Any] = {
            "t_index_list": stream.t_index_list,
            "cfg_type": stream.cfg_type,
            "prompt": prompt.text,
            "negative_prompt": prompt.negative,
            "guidance_scale": prompt.guidance,
            "delta": prompt.delta,
            "seed": prompt.seed,
            "num_inference_steps": stream.num_inference_steps,
            "do_add_noise": stream.do_add_noise,
            "use_denoising_batch": stream.use_denoising_batch,
        }
        if preset.model.vae is not None:
            vae = save_tiny_taesd(work / "vae") if preset.model.vae == TINY_VAE_ID else Path(preset.model.vae)
            settings["vae_dir"] = str(vae)
        clip = np.stack(list(_frames(stream.width, stream.height, max(frames, 96) + 1)))
        np.save(work / "clip.npy", clip)
        command = [
            python,
            str(_reference_script(script)),
            str(model_dir),
            str(work / "clip.npy"),
            str(work / "ref.npy"),
        ]
        ours_command = [sys.executable, "-m", "engine.commands.clip_run", *command[2:4], str(work / "ours.npy")]
        reference_runs, our_runs = [], []
        for _ in range(repeats):  # both in fresh processes, taking turns
            reference_runs.append(_clip_fps([*command, json.dumps(settings)], "the reference run"))
            our_runs.append(_clip_fps([*ours_command, json.dumps(settings)], "our run"))
        difference = float(np.abs(np.load(work / "ours.npy") - np.load(work / "ref.npy")).max())
    reference_fps, ours_fps = statistics.median(reference_runs), statistics.median(our_runs)
    return {
        "reference_fps": reference_fps,
        "ours_fps": ours_fps,
        "ratio": ours_fps / reference_fps,
        "reference_runs_fps": reference_runs,
        "our_runs_fps": our_runs,
        "max_abs_diff": difference,
        "frames": len(clip),
    }


def _clip_fps(command: list[str], what: str) -> float:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise DreamwireError(f"{what} failed: {done.stderr.strip().splitlines()[-1:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["fps"])


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


def run_bench(preset: Preset, args: argparse.Namespace) -> dict[str, Any]:
    from engine.commands.bench_bridges import bridge_costs
    from engine.commands.bench_live import loop_efficiency, memory_soak, prompt_change_frame_times
    from engine.commands.bench_osc import osc_benchmarks

    torch.set_grad_enabled(False)
    models = load_models(preset.model)
    results = run_measurements(models, preset, args.frames)
    changes = prompt_change_frame_times(models, preset, frames=max(50, 8 * args.frames))
    report: dict[str, Any] = {
        "device": load_device_name(preset),
        "threads": torch.get_num_threads(),
        "measurements": [asdict(r) for r in results],
        "ratios": ratios(results),
        "prompt_changes": {**asdict(changes), "p99_over_median": changes.p99_over_median},
        "loop": loop_efficiency(models, preset, seconds=max(2.0, args.frames / 6)),
        "bridges": bridge_costs(frames=max(100, 8 * args.frames)),
    }
    report["osc"] = osc_benchmarks(models, preset)
    from engine.bench.tempo import tempo_benchmarks

    report["tempo"] = tempo_benchmarks(models, preset, changes=max(4, args.frames), frames=max(8, 4 * args.frames))
    if args.soak:
        report["soak"] = memory_soak(models, preset, args.soak)
    if args.reference_python:
        report["reference"] = reference_side_by_side(preset, args.reference_python, args.reference_script, args.frames)
    print(json.dumps(report, indent=2) if args.json else format_report(results, report))
    return report


def format_report(results: list[Measurement], report: dict[str, Any]) -> str:
    lines = [format_table(results), ""]
    lines += [f"{key}: {value:.2f}x" for key, value in report["ratios"].items()]
    pc, loop = report["prompt_changes"], report["loop"]
    lines.append(
        f"prompt changes: {pc['prompt_changes']} in {pc['frames']} frames, frame time median {pc['median_ms']:.1f} ms, "
        f"p99 {pc['p99_ms']:.1f} ms, p99/median {pc['p99_over_median']:.2f}x"
    )
    lines.append(
        f"loop efficiency: engine {loop['engine_fps']:.1f} fps / bare pipeline {loop['bare_pipeline_fps']:.1f} fps "
        f"= {loop['efficiency']:.2f}"
    )
    if "osc" in report:
        from engine.commands.bench_osc import format_osc

        lines.append(format_osc(report["osc"]))
    if "tempo" in report:
        from engine.bench.tempo import format_tempo

        lines.append(format_tempo(report["tempo"]))
    if "soak" in report:
        soak = report["soak"]
        lines.append(
            f"memory soak: {soak['frames']} frames, RSS {soak['rss_after_warmup_mb']:.0f} MB after warm-up, "
            f"{soak['rss_end_mb']:.0f} MB at the end (growth {soak['growth_mb']:+.1f} MB, "
            f"peak {soak['rss_peak_mb']:.0f} MB)"
        )
    if "reference" in report:
        ref = report["reference"]
        lines.append(
            f"reference side by side ({ref['frames']} frames, median of {len(ref['our_runs_fps'])} runs each): "
            f"ours {ref['ours_fps']:.1f} fps, reference {ref['reference_fps']:.1f} fps, ratio {ref['ratio']:.2f}x, "
            f"max |ours - reference| {ref['max_abs_diff']:.2e}"
        )
    if "bridges" in report:
        from engine.commands.bench_bridges import format_bridge_costs

        lines += format_bridge_costs(report["bridges"])
    lines.append(f"device: {report['device']}, torch threads: {report['threads']}")
    return "\n".join(lines)


def load_device_name(preset: Preset) -> str:
    from engine.pipeline.models import resolve_device

    device, dtype = resolve_device(preset.model.device, preset.model.dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return f"{name} ({dtype})"
