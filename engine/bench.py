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
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bridges.pattern import pattern_image
from engine.config import Preset
from engine.errors import DreamwireError
from engine.image import FrameLoader, to_unit_range
from engine.models import Models, load_models
from engine.stream import StreamPipeline

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


def _frames(width: int, height: int, count: int, static: bool) -> Iterator[np.ndarray]:
    for index in range(count):
        yield pattern_image(0 if static else index, width, height)


class _Instant(_Timed):
    """A model call answered instantly with its first result: what is left of a frame is pure overhead."""

    cached: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, *args: Any) -> torch.Tensor:
        if self.cached is None:
            self.cached = self.inner(x, *args)
        self.rows += x.shape[0]
        self.calls += 1
        return self.cached


def measure(
    models: Models, preset: Preset, name: str, frames: int, static: bool = False, models_stubbed: bool = False
) -> Measurement:
    stream = preset.stream
    pipeline = StreamPipeline(models, stream)
    pipeline.prepare(preset.prompt, preset.filter)
    wrap = _Instant if models_stubbed else _Timed
    unet = pipeline.unet = wrap(pipeline.unet, models.device)
    encode = pipeline.codec.encode = wrap(pipeline.codec.encode, models.device)  # type: ignore[method-assign]
    decode = pipeline.codec.decode = wrap(pipeline.codec.decode, models.device)  # type: ignore[method-assign]
    f = stream.frame_buffer_size
    load = FrameLoader(f, stream.height, stream.width, models.device, models.dtype)
    images = list(_frames(stream.width, stream.height, (WARMUP_FRAMES + frames) * f, static))
    steps = [np.stack(images[i : i + f]) for i in range(0, len(images), f)]
    txt2img = stream.mode != "img2img"
    start = 0.0
    for index, group in enumerate(steps):
        if index == WARMUP_FRAMES:
            for timer in (unet, encode, decode):
                timer.seconds, timer.rows, timer.calls = 0.0, 0, 0
            _sync(models.device)
            start = time.perf_counter()
        image = None if txt2img else load(group)
        to_unit_range(pipeline.step(image)).float().cpu().numpy()  # the host copy a sink makes
    elapsed = time.perf_counter() - start
    output_frames = frames * f
    model_seconds = unet.seconds + encode.seconds + decode.seconds
    return Measurement(
        name=name,
        fps=output_frames / elapsed,
        unet_rows_per_frame=unet.rows / output_frames,
        model_ms=1000 * model_seconds / output_frames,
        overhead_ms=1000 * (elapsed - model_seconds) / output_frames,
        skip_rate=1.0 - encode.calls / frames,
        note="model calls stubbed out" if models_stubbed else "",
    )


def _variant(preset: Preset, **changes: Any) -> Preset:
    data = preset.model_dump()
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        data[section][key] = value
    return Preset.model_validate(data)


def run_measurements(models: Models, preset: Preset, frames: int) -> list[Measurement]:
    n = len(preset.stream.t_index_list)
    cfg = preset.stream.cfg_type
    results = [
        measure(models, _variant(preset, stream__use_denoising_batch=True), f"stream batch (cfg {cfg}, n={n})", frames),
        measure(models, _variant(preset, stream__use_denoising_batch=False), f"sequential (cfg {cfg}, n={n})", frames),
    ]
    # CFG at 512x512, the size users run: there the UNet dominates the frame as it does for real models.
    big = _variant(preset, stream__width=512, stream__height=512, stream__use_denoising_batch=True)
    guidance = max(preset.prompt.guidance, 1.2)  # guidance <= 1 would turn full/initialize into none
    for cfg_type in ("none", "self", "initialize", "full"):
        variant = _variant(big, stream__cfg_type=cfg_type, prompt__guidance=guidance)
        results.append(measure(models, variant, f"cfg {cfg_type} (g={guidance}, 512x512)", max(4, frames // 4)))
    on = {"filter__enabled": True}
    results.append(measure(models, _variant(preset, **on), "ssf on, static input", frames, static=True))
    results.append(measure(models, _variant(preset, **on), "ssf on, changing input", frames, static=False))
    results.append(measure(models, big, "overhead (512x512, models stubbed)", frames * 4, models_stubbed=True))
    return results


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
    models: Models, preset: Preset, python: str, script: str | None, frames: int
) -> dict[str, Any]:
    """Run the reference StreamDiffusion and ours over the same clip, same model and settings; report both
    fps (each over the clip after its first frame) and the largest output difference."""
    from engine.tiny import TINY_MODEL_ID, TINY_VAE_ID, save_tiny_pipeline, save_tiny_taesd

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
        clip = np.stack(list(_frames(stream.width, stream.height, frames + 1, static=False)))
        np.save(work / "clip.npy", clip)
        command = [
            python,
            str(_reference_script(script)),
            str(model_dir),
            str(work / "clip.npy"),
            str(work / "ref.npy"),
        ]
        done = subprocess.run([*command, json.dumps(settings)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise DreamwireError(f"the reference run failed: {done.stderr.strip().splitlines()[-1:]}")
        reference = json.loads(done.stdout.strip().splitlines()[-1])
        ours, ours_fps = _our_clip_run(models, preset, clip)
        difference = float(np.abs(ours - np.load(work / "ref.npy")).max())
    return {
        "reference_fps": reference["fps"],
        "ours_fps": ours_fps,
        "ratio": ours_fps / reference["fps"],
        "max_abs_diff": difference,
        "frames": len(clip),
    }


def _our_clip_run(models: Models, preset: Preset, clip: np.ndarray) -> tuple[np.ndarray, float]:
    """Ours, timed as the reference script times itself: per frame preprocess, step, host copy."""
    pipeline = StreamPipeline(models, preset.stream)
    pipeline.prepare(preset.prompt, preset.filter)
    stream = preset.stream
    load = FrameLoader(1, stream.height, stream.width, models.device, models.dtype)
    outputs, start = [], 0.0
    for index, frame in enumerate(clip):
        if index == 1:
            start = time.perf_counter()
        image = load(frame[None])
        outputs.append(to_unit_range(pipeline.step(image))[0].float().cpu().numpy())
    return np.stack(outputs), (len(clip) - 1) / (time.perf_counter() - start)


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
    from engine.bench_live import loop_efficiency, memory_soak, prompt_change_frame_times

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
    }
    if args.soak:
        report["soak"] = memory_soak(models, preset, args.soak)
    if args.reference_python:
        report["reference"] = reference_side_by_side(
            models, preset, args.reference_python, args.reference_script, args.frames
        )
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
            f"reference side by side ({ref['frames']} frames): ours {ref['ours_fps']:.1f} fps, "
            f"reference {ref['reference_fps']:.1f} fps, ratio {ref['ratio']:.2f}x, "
            f"max |ours - reference| {ref['max_abs_diff']:.2e}"
        )
    lines.append(f"device: {report['device']}, torch threads: {report['threads']}")
    return "\n".join(lines)


def load_device_name(preset: Preset) -> str:
    from engine.models import resolve_device

    device, dtype = resolve_device(preset.model.device, preset.model.dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return f"{name} ({dtype})"
