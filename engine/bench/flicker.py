"""`dreamwire bench --only flicker`: how steady the output is, per setting, on two clips.

Clips (the preset's size): `static`, one textured frame repeated; `moving`, the same texture translated by
SHIFT pixels a frame (pure translation: the optical flow is known and has no occlusion but the entering edge).

Metrics, in 8-bit levels (0-255), over the outputs once Stream Batch has filled (its n − 1 warm-up frames dropped,
and each output paired with the input it came from):
- `diff`: the mean absolute difference between consecutive output frames;
- `warp`: the warp error StreamV2V's paper reports, with a flow we can run offline: OpenCV's Farneback flow on the
  input frames t → t+1 and t+1 → t, an occlusion mask from the forward–backward check (Sundaram et al. 2010:
  occluded where |f + b|² > 0.01·(|f|² + |b|²) + 0.5, or where the flow leaves the frame), output t warped onto
  t+1 with the backward flow, and the mean absolute error on the pixels that are not occluded.

Settings: none, the feature bank with max_frames 1/2/4, latent_feedback at 0.3/0.6 and the feedback effect, each a
preset override written as data. A setting whose section or processor this build does not know is reported as
"not available" with the reason (never measured as something else). fps of each is a ratio to none.

With random weights (the tiny model) the numbers show that a mechanism works and what it costs, not how good it
looks: the real-weights check is manual (README, "Feature bank").
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from engine.config.processors import BENCH_SETTINGS
from engine.config.schema import Preset
from engine.core.errors import DreamwireError
from engine.live.rebuild import build_pipeline
from engine.pipeline.image import to_unit_range
from engine.pipeline.models import Models

log = logging.getLogger(__name__)
SHIFT = 3  # px per frame, to the right
LEVELS = 255.0  # metrics in 8-bit levels

# (name, preset override): merged into the preset as data, validated by the schema like a YAML file would be. The
# processor rows are the settings engine/config/processors.py names for this bench.
SETTINGS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("none", {}),
    *((f"feature_bank {n}", {"feature_bank": {"enabled": True, "max_frames": n, "interval": 1}}) for n in (1, 2, 4)),
    *((label, {"processors": settings}) for label, settings in BENCH_SETTINGS.items() if settings),
)


def _cv2() -> Any:
    try:
        import cv2
    except ImportError:
        raise DreamwireError("the flicker bench needs OpenCV (optical flow): pip install 'dreamwire[camera]'") from None
    return cv2


def texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random colour texture (H, W, 3) uint8: blurred noise, rich enough for optical flow."""
    cv2 = _cv2()
    noise = np.random.default_rng(seed).random((height, width, 3)).astype(np.float32)
    blurred = cv2.GaussianBlur(noise, (0, 0), sigmaX=2.0)
    low, high = blurred.min(), blurred.max()
    return ((blurred - low) / (high - low) * 255.0).astype(np.uint8)


def clips(height: int, width: int, frames: int) -> dict[str, np.ndarray]:
    """{"static", "moving"}: (frames, H, W, 3) uint8; moving is a window sliding SHIFT px a frame over the texture."""
    wide = texture(height, width + SHIFT * frames)
    moving = np.stack([wide[:, SHIFT * i : SHIFT * i + width] for i in range(frames)][::-1])  # content moves right
    return {"static": np.repeat(moving[:1], frames, axis=0), "moving": moving}


def consecutive_difference(outputs: np.ndarray) -> float:
    """outputs (N, H, W, 3) float in [0, 1] → mean |out_{t+1} − out_t| in levels."""
    return float(np.abs(np.diff(outputs, axis=0)).mean() * LEVELS)


def _gray(image: np.ndarray) -> np.ndarray:
    cv2 = _cv2()
    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)


def _flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Farneback flow a → b (H, W, 2): a(x) ≈ b(x + flow(x))."""
    cv2 = _cv2()
    return cv2.calcOpticalFlowFarneback(_gray(a), _gray(b), None, 0.5, 3, 15, 3, 5, 1.2, 0)


def warp_error(inputs: np.ndarray, outputs: np.ndarray) -> float:
    """inputs (N, H, W, 3) uint8, outputs (N, H, W, 3) float in [0, 1], aligned (output t made from input t) →
    mean |out_{t+1} − warp(out_t)| over the pixels not occluded, in levels (see the module docstring)."""
    cv2 = _cv2()
    n, height, width, _ = inputs.shape
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    errors, weights = 0.0, 0
    for t in range(n - 1):
        forward, backward = _flow(inputs[t], inputs[t + 1]), _flow(inputs[t + 1], inputs[t])
        map_x, map_y = xs + backward[..., 0], ys + backward[..., 1]  # where each pixel of t+1 was in t
        forward_there = cv2.remap(forward, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        mismatch = ((backward + forward_there) ** 2).sum(-1)
        scale = (backward**2).sum(-1) + (forward_there**2).sum(-1)
        inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
        visible = inside & (mismatch <= 0.01 * scale + 0.5)
        warped = cv2.remap(outputs[t].astype(np.float32), map_x, map_y, cv2.INTER_LINEAR)
        error = np.abs(outputs[t + 1] - warped).mean(-1)
        errors += float(error[visible].sum())
        weights += int(visible.sum())
    return errors / max(weights, 1) * LEVELS


def merged(preset: Preset, override: dict[str, Any]) -> Preset:
    """The preset with `override` merged in section by section, validated whole (DreamwireError with the reason)."""
    data = preset.model_dump()
    for section, values in override.items():
        data[section] = {**data[section], **values} if isinstance(data.get(section), dict) else values
    try:
        return Preset.model_validate(data)
    except ValidationError as error:  # an unknown section or value in this build
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "preset"
        why = "this build's preset schema has no such key" if first["type"] == "extra_forbidden" else first["msg"]
        raise DreamwireError(f"{where}: {why}") from None


@dataclass
class Run:
    outputs: np.ndarray  # (N − lag, H, W, 3) float in [0, 1]: output t made from input t
    fps: float


def run_setting(models: Models, preset: Preset, frames: np.ndarray) -> Run:
    """The clip through a pipeline built from the whole preset (as the live engine builds it)."""
    _, pipeline = build_pipeline(models, preset, {}, None)
    loader = pipeline.frame_loader()
    outputs = []
    start = time.perf_counter()
    with torch.no_grad():
        for index in range(len(frames)):
            outputs.append(to_unit_range(pipeline.step(loader(frames[index : index + 1])))[0].float().cpu().numpy())
    fps = len(frames) / (time.perf_counter() - start)
    lag = pipeline.slots - 1 if pipeline.config.use_denoising_batch else 0  # Stream Batch: n − 1 frames late
    return Run(np.stack(outputs[lag:]), fps)


def flicker_benchmarks(models: Models, preset: Preset, frames: int = 24) -> dict[str, Any]:
    """{setting: {"static": {diff, warp}, "moving": {...}, "fps", "fps_ratio_to_none"} or {"not available": why}}."""
    base = preset.model_copy(deep=True)
    base.filter.enabled = False  # every frame runs the model: skipped frames would read as perfectly steady
    stream = base.stream
    if stream.frame_buffer_size != 1:
        base.stream = stream.model_copy(update={"frame_buffer_size": 1})
    clip_frames = clips(stream.height, stream.width, frames)
    results: dict[str, Any] = {}
    for name, override in SETTINGS:
        try:
            setting = merged(base, override)
            runs = {clip: run_setting(models, setting, video) for clip, video in clip_frames.items()}
        except DreamwireError as error:
            results[name] = {"not available": str(error)}
            log.info("flicker: %s not available: %s", name, error)
            continue
        entry: dict[str, Any] = {}
        for clip, run in runs.items():
            inputs = clip_frames[clip][: len(run.outputs)]
            entry[clip] = {"diff": consecutive_difference(run.outputs), "warp": warp_error(inputs, run.outputs)}
        entry["fps"] = runs["moving"].fps
        results[name] = entry
    none_fps = results["none"]["fps"]
    for entry in results.values():
        if "fps" in entry:
            entry["fps_ratio_to_none"] = entry["fps"] / none_fps
    return {"frames": frames, "shift_px": SHIFT, "settings": results}


def format_flicker(result: dict[str, Any]) -> list[str]:
    lines = [
        f"flicker ({result['frames']} frames a clip, moving {result['shift_px']} px/frame; levels 0-255; "
        "diff: consecutive frames, warp: warp error on non-occluded pixels):",
        "| setting | static diff | static warp | moving diff | moving warp | fps | fps / none |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, entry in result["settings"].items():
        if "not available" in entry:
            lines.append(f"| {name} | not available: {entry['not available']} | | | | | |")
            continue
        s, m = entry["static"], entry["moving"]
        lines.append(
            f"| {name} | {s['diff']:.3f} | {s['warp']:.3f} | {m['diff']:.3f} | {m['warp']:.3f} | "
            f"{entry['fps']:.1f} | {entry['fps_ratio_to_none']:.2f} |"
        )
    return lines


def score_files(input_path: str, output_path: str, lag: int = 0) -> dict[str, float]:
    """The two metrics of a rendered clip (`dreamwire render` output, OUT made from IN): {"diff", "warp"}. lag: the
    outputs' latency in frames (Stream Batch: n − 1; render keeps its warm-up outputs, which are dropped)."""
    from bridges.clip_io import iter_clip

    cv2 = _cv2()
    outputs = np.stack([frame.astype(np.float32) / 255.0 for frame in iter_clip(output_path)])[lag:]
    height, width = outputs.shape[1:3]
    inputs = np.stack([cv2.resize(frame, (width, height)) for frame in iter_clip(input_path)])[: len(outputs)]
    outputs = outputs[: len(inputs)]
    if len(outputs) < 2:
        raise DreamwireError(f"{output_path}: fewer than 2 frames to compare after a lag of {lag}")
    return {"diff": consecutive_difference(outputs), "warp": warp_error(inputs, outputs)}


def main(argv: list[str] | None = None) -> None:
    """python -m engine.bench.flicker IN OUT [OUT ...] [--lag N]: the metrics of rendered clips (the real-weights
    check in the README: the same camera clip rendered with the feature bank off and on)."""
    parser = argparse.ArgumentParser(prog="python -m engine.bench.flicker", description=main.__doc__)
    parser.add_argument("input", help="the input clip (video, PNG folder or .npy)")
    parser.add_argument("outputs", nargs="+", help="clips rendered from it")
    parser.add_argument("--lag", type=int, default=0, help="output latency in frames (n − 1 with Stream Batch)")
    args = parser.parse_args(argv)
    print("| output | diff | warp |\n|---|---:|---:|")
    for output in args.outputs:
        scores = score_files(args.input, output, args.lag)
        print(f"| {output} | {scores['diff']:.3f} | {scores['warp']:.3f} |")


if __name__ == "__main__":
    main()
