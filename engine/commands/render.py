"""`dreamwire render`: offline, frame-exact processing of a clip — one output per input frame, in the
reference's per-call order (the first (n − 1)·f outputs come from the warm-up buffer)."""

from __future__ import annotations

import logging
import time
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bridges.clip_io import ClipWriter, iter_clip
from engine.config.schema import Preset
from engine.core.errors import DreamwireError
from engine.pipeline.image import to_unit_range
from engine.pipeline.models import load_models
from engine.pipeline.stream import StreamPipeline

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RenderReport:
    frames: int
    seconds: float


def chunks(frames: Iterable[np.ndarray], size: int) -> Iterator[tuple[np.ndarray, int]]:
    """Groups of `size` frames as (size, H, W, 3), and how many are real: the last group is padded by
    repeating its last frame (frame_buffer_size > 1), and the padding's outputs are not written."""
    group: list[np.ndarray] = []
    for frame in frames:
        group.append(frame)
        if len(group) == size:
            yield np.stack(group), size
            group = []
    if group:
        real = len(group)
        group += [group[-1]] * (size - real)
        yield np.stack(group), real


def render(preset: Preset, input_path: str | None, output_path: str, frames: int | None = None) -> RenderReport:
    """Input and output are checked first (the output location by making its ClipWriter), then the model loads:
    a bad path fails in one line before any work is done."""
    stream = preset.stream
    txt2img = stream.mode != "img2img"
    if input_path is None and not txt2img:
        raise DreamwireError("render needs --input for stream.mode img2img")
    if frames is not None and frames < 1:
        raise DreamwireError(f"--frames {frames}: use 1 or more")
    if input_path is not None:
        if not Path(input_path).exists():
            raise DreamwireError(f"input not found: {input_path!r}")
        if Path(output_path).resolve() == Path(input_path).resolve():
            raise DreamwireError(f"--output {output_path!r} is the --input: write the result somewhere else")
    size = (stream.height, stream.width)
    source: Generator[np.ndarray, None, None] = (
        iter_clip(input_path)  # validated now: a bad clip fails here, before the model loads
        if input_path is not None
        else (np.zeros((*size, 3), np.uint8) for _ in range(frames or 1))
    )
    count = 0
    try:
        with ClipWriter(output_path) as writer:
            models = load_models(preset.model)
            pipeline = StreamPipeline.prepared(
                models, stream, preset.prompt, preset.filter, processors=preset.processors
            )
            load = pipeline.frame_loader()
            start = time.perf_counter()
            for group, real in chunks(source, stream.frame_buffer_size):
                image = None if txt2img else load(group)
                output = to_unit_range(pipeline.step(image)).float().cpu().numpy()  # [f, H, W, 3] in [0, 1]
                for frame in output[:real]:
                    writer.write(frame)
                count += real
    finally:
        source.close()  # a video input's file
    seconds = time.perf_counter() - start
    log.info("rendered %d frames to %s in %.1f s (%.1f fps)", count, output_path, seconds, count / max(seconds, 1e-9))
    return RenderReport(frames=count, seconds=seconds)
