"""`dreamwire bench`'s controlnet part: fps with 0, 1 and 2 ControlNets, and with one whose residuals are reused for
2 and 4 frames, measured in one run and interleaved (ratios to none); what the reuse changes in the picture; and
each preprocessor's cost per 512x512 frame.

The ControlNets are the preset's first one (or `random`: one built from the model's own UNet, the architecture
of a real ControlNet for that base) with preprocessor none, so that the fps compares the nets alone; the
preprocessors are timed on their own.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from bridges.pattern import pattern_image
from engine.config.schema import ControlNetConfig, Preset
from engine.core.errors import DreamwireError
from engine.pipeline.image import FrameLoader, to_unit_range
from engine.pipeline.models import Models
from engine.pipeline.preprocess import Canny, Depth, SoftEdge, load_depth_model
from engine.pipeline.stream import StreamPipeline

log = logging.getLogger(__name__)
COUNTS = (0, 1, 2)
REUSE = (2, 4)  # residual reuse (one ControlNet): residuals computed once every N frames
QUALITY_FRAMES = 8  # frames of a moving pattern compared with and without reuse
PREPROCESSOR_SIZE = 512  # px: the frame side the preprocessors are timed at
WARMUP_FRAMES = 3
DEFAULT_DEPTH_MODEL = ControlNetConfig.model_fields["depth_model"].default


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def controlnet_costs(models: Models, preset: Preset, frames: int, rounds: int = 3) -> dict[str, Any]:
    """{"fps": {count: fps}, "fps_ratio_to_none": {count: ratio}, "preprocessor_ms": {name: ms or reason}}."""
    net = preset.controlnets[0] if preset.controlnets else ControlNetConfig(model="random")
    update = {"preprocessor": "none", "input": None, "scale": 1.0, "enabled": True, "reuse_frames": 1}
    net = net.model_copy(update=update)
    stream = preset.stream.model_copy(update={"cuda_graph": False})  # reuse cannot run in a captured step
    image = np.stack([pattern_image(0, stream.width, stream.height)])

    def make(count: int, reuse: int = 1) -> StreamPipeline:
        nets = [net.model_copy(update={"reuse_frames": reuse})] * count
        return StreamPipeline.prepared(models, stream, preset.prompt, preset.filter, controlnets=nets)

    pipelines: dict[Any, StreamPipeline] = {count: make(count) for count in COUNTS}
    pipelines |= {f"1 reuse {n}": make(1, n) for n in REUSE}
    loader = pipelines[0].frame_loader()
    seconds = dict.fromkeys(pipelines, 0.0)
    per_round = max(1, frames // rounds)
    for pipeline in pipelines.values():
        for _ in range(WARMUP_FRAMES):
            to_unit_range(pipeline.step(loader(image))).float().cpu()
    for _ in range(rounds):  # interleaved: a slow spell of the machine touches every count alike
        for count, pipeline in pipelines.items():
            start = time.perf_counter()
            for _ in range(per_round):
                to_unit_range(pipeline.step(loader(image))).float().cpu()  # the host copy a sink makes
            seconds[count] += time.perf_counter() - start
    fps = {key: rounds * per_round * stream.frame_buffer_size / seconds[key] for key in pipelines}
    return {
        "controlnet_model": net.model,
        "fps": fps,
        "fps_ratio_to_none": {key: fps[key] / fps[0] for key in pipelines},
        "reuse_difference": {n: reuse_difference(make, loader, stream.width, stream.height, n) for n in REUSE},
        "preprocessor_ms": preprocessor_costs(models, preset, frames=max(10, frames)),
    }


def reuse_difference(make: Any, loader: FrameLoader, width: int, height: int, reuse: int) -> float:
    """Mean |output with residuals reused every `reuse` frames − output computed every frame| (pixels in [0, 1]),
    over QUALITY_FRAMES frames of the moving pattern from the same start: what reuse costs in the picture."""
    outputs = []
    for every in (1, reuse):
        pipeline = make(1, every)
        frames = [loader(np.stack([pattern_image(i, width, height)])) for i in range(QUALITY_FRAMES)]
        outputs.append(torch.stack([to_unit_range(pipeline.step(frame)).float().cpu() for frame in frames]))
    return float((outputs[0] - outputs[1]).abs().mean())


def preprocessor_costs(models: Models, preset: Preset, frames: int) -> dict[str, float | str]:
    """Milliseconds per 512x512 frame of canny, soft_edge and depth (or why depth could not be loaded)."""
    device, dtype = models.device, models.dtype
    config = ControlNetConfig(model="random")
    depth_id = next((c.depth_model for c in preset.controlnets if c.preprocessor == "depth"), DEFAULT_DEPTH_MODEL)
    loader = FrameLoader(1, PREPROCESSOR_SIZE, PREPROCESSOR_SIZE, device, dtype)
    image = loader(np.stack([pattern_image(0, PREPROCESSOR_SIZE, PREPROCESSOR_SIZE)]))
    costs: dict[str, float | str] = {}
    preprocessors: dict[str, Any] = {
        "canny": Canny(config, device, dtype),
        "soft_edge": SoftEdge(config, device, dtype),
    }
    try:
        preprocessors["depth"] = Depth(load_depth_model(depth_id, device, dtype), device, dtype)
    except DreamwireError as error:
        costs["depth"] = f"not measured: {str(error).split('. ')[0]}"  # its first sentence names the model and why
    with torch.no_grad():
        for name, preprocess in preprocessors.items():
            for _ in range(WARMUP_FRAMES):
                preprocess(image)
            _sync(device)
            start = time.perf_counter()
            for _ in range(frames):
                preprocess(image)
            _sync(device)
            costs[name] = 1000.0 * (time.perf_counter() - start) / frames
    return costs


def format_controlnet(result: dict[str, Any]) -> list[str]:
    fps, ratio = result["fps"], result["fps_ratio_to_none"]
    counts = ", ".join(f"{count}: {fps[count]:.1f} fps ({ratio[count]:.2f}x)" for count in fps)
    reuse = ", ".join(f"every {n} frames: mean |difference| {d:.4f}" for n, d in result["reuse_difference"].items())
    costs = ", ".join(
        f"{name} {value:.1f} ms" if isinstance(value, float) else f"{name} {value}"
        for name, value in result["preprocessor_ms"].items()
    )
    return [
        f"controlnets ({result['controlnet_model']}, ratio to none): {counts}",
        f"controlnet residual reuse (1 net), pictures against every frame: {reuse}",
        f"preprocessors per {PREPROCESSOR_SIZE}x{PREPROCESSOR_SIZE} frame: {costs}",
    ]
