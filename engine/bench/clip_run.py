"""Our side of the side-by-side check: the same command line and output as the reference's run_reference.py
(../shared/tools/reference), so `dreamwire bench` can run both the same way, each in a fresh process.

    python -m engine.bench.clip_run MODEL_DIR FRAMES.npy OUT.npy '{"t_index_list": [32, 45], ...}'

Prints one JSON line: fps over the clip (after the first frame), frames, shape.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np
import torch

from engine.config.schema import FilterConfig, ModelConfig, PromptConfig, StreamConfig
from engine.pipeline.image import to_unit_range
from engine.pipeline.models import load_models
from engine.pipeline.stream import StreamPipeline


def run_clip(model_dir: str, frames: np.ndarray, settings: dict[str, Any]) -> tuple[np.ndarray, float]:
    """frames: (N, H, W, 3) uint8 or float in [0, 1] → outputs (N, H, W, 3) float32 in [0, 1], and fps."""
    n, height, width, _ = frames.shape
    models = load_models(ModelConfig(id=model_dir, vae=settings.get("vae_dir"), dtype="float32", device="auto"))
    stream = StreamConfig(
        width=width,
        height=height,
        t_index_list=settings.get("t_index_list", [32, 45]),
        cfg_type=settings.get("cfg_type", "self"),
        num_inference_steps=settings.get("num_inference_steps", 50),
        do_add_noise=settings.get("do_add_noise", True),
        use_denoising_batch=settings.get("use_denoising_batch", True),
    )
    prompt = PromptConfig(
        text=settings.get("prompt", "a photo"),
        negative=settings.get("negative_prompt", ""),
        guidance=settings.get("guidance_scale", 1.2),
        delta=settings.get("delta", 1.0),
        seed=settings.get("seed", 2),
    )
    pipeline = StreamPipeline.prepared(models, stream, prompt, FilterConfig())
    load = pipeline.frame_loader()
    outputs, start = [], 0.0
    with torch.no_grad():
        for index in range(n):
            if index == 1:
                start = time.perf_counter()
            outputs.append(to_unit_range(pipeline.step(load(frames[index : index + 1])))[0].float().cpu().numpy())
    fps = (n - 1) / (time.perf_counter() - start) if n > 1 else 0.0
    return np.stack(outputs), fps


def main() -> None:
    model_dir, frames_path, out_path = sys.argv[1:4]
    settings = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    outputs, fps = run_clip(model_dir, np.load(frames_path), settings)
    np.save(out_path, outputs)
    print(json.dumps({"fps": fps, "frames": len(outputs), "shape": list(outputs.shape)}))


if __name__ == "__main__":
    main()
