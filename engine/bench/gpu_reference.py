"""The reference StreamDiffusion (PyPI streamdiffusion 0.1.1, acceleration none) timed the way the GPU bench
times ours: same model folder, settings, frames, host copies and energy meter. It runs in its own process
with the reference's packages first on PYTHONPATH (diffusers 0.24, transformers 4.45): this module imports
nothing of dreamwire's but gpu_energy (standard library + pynvml).

    python -m engine.bench.gpu_reference '{"model_dir": ..., "vae_dir": ..., "dtype": "float16",
        "device": "cuda", "settings": [{"name": ..., "mode": "img2img", ...}], "warmup_s": 0.5, "timed_s": 2}'

Prints one line `RESULT {json}` per setting as soon as it is measured (so a timeout keeps what was done).
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from typing import Any

import numpy as np

from engine.bench.gpu_energy import EnergyMeter

PROMPT = "a painting of a lighthouse in a storm, vivid colours"


def bench_frames(count: int, width: int, height: int) -> list[np.ndarray]:
    """`count` different (H, W, 3) uint8 frames: smooth moving gradients with a little noise (deterministic)."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for index in range(count):
        phase = index / max(count, 1) * 2 * np.pi
        channels = [np.sin(xs / 37.0 + phase + k) + np.cos(ys / 23.0 - phase * k) for k in range(3)]
        image = (np.stack(channels, axis=-1) * 0.25 + 0.5) * 255 + rng.normal(0, 4, (height, width, 3))
        frames.append(np.clip(image, 0, 255).astype(np.uint8))
    return frames


def timed_loop(call: Any, sync: Any, warmup_s: float, timed_s: float) -> dict[str, Any]:
    """Warm up (at least 3 frames), then run frames for timed_s under the energy meter. Every call ends with
    a host copy of the output, so each frame's time is real; fps = frames / seconds."""
    start = time.perf_counter()
    index = 0
    while index < 3 or time.perf_counter() - start < warmup_s:
        call(index)
        index += 1
    sync()
    times: list[float] = []
    with EnergyMeter() as meter:
        begin = time.perf_counter()
        while not times or time.perf_counter() - begin < timed_s:
            t0 = time.perf_counter()
            call(index)
            index += 1
            times.append(time.perf_counter() - t0)
        sync()
        seconds = time.perf_counter() - begin
    ordered = sorted(times)
    return {
        "fps": len(times) / seconds,
        "frames": len(times),
        "seconds": seconds,
        "ms_p50": 1000 * ordered[len(ordered) // 2],
        "ms_p95": 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))],
        **meter.result(len(times)),
    }


def run_setting(pipe: Any, setting: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from streamdiffusion import StreamDiffusion

    dtype, device = getattr(torch, spec["dtype"]), spec["device"]
    width, height = setting["width"], setting["height"]
    started = time.perf_counter()
    stream = StreamDiffusion(
        pipe,
        t_index_list=setting["t_index_list"],
        torch_dtype=dtype,
        width=width,
        height=height,
        cfg_type=setting["cfg_type"],
    )
    stream.prepare(
        prompt=PROMPT,
        num_inference_steps=50,
        guidance_scale=setting["guidance"],
        delta=1.0,
        generator=torch.Generator(),
        seed=2,
    )
    frames = [torch.from_numpy(f) for f in bench_frames(8, width, height)]

    def to_host(image: torch.Tensor) -> np.ndarray:  # what a sink needs: (H, W, 3) uint8 on the host
        return ((image / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)[0].permute(1, 2, 0).cpu().numpy()

    if setting["mode"] == "txt2img-turbo":

        def call(index: int) -> np.ndarray:
            return to_host(stream.txt2img_sd_turbo(1))
    else:

        def call(index: int) -> np.ndarray:
            x = frames[index % len(frames)].to(device).permute(2, 0, 1)[None].to(dtype) / 255.0  # [1, 3, H, W]
            return to_host(stream(x))

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad():
        result = timed_loop(call, sync, spec.get("warmup_s", 0.5), spec.get("timed_s", 2.0))
    result["setup_s"] = time.perf_counter() - started - result["seconds"]
    return result


def _stand_in_cuda_events() -> None:
    """The reference times every call with CUDA events and synchronises; on a CPU-only machine (the dry run)
    they are stood in, with no numeric effect."""
    import torch

    class Event:
        def __init__(self, **_: Any) -> None:
            pass

        def record(self, *_: Any) -> None:
            pass

        def elapsed_time(self, _: Any) -> float:
            return 1.0

    torch.cuda.Event = Event  # type: ignore[misc, assignment]
    torch.cuda.synchronize = lambda *a, **k: None  # type: ignore[assignment]


def main() -> None:
    spec = json.loads(sys.argv[1])
    started = time.perf_counter()
    import torch
    from diffusers import AutoencoderTiny, StableDiffusionPipeline

    if spec["device"] != "cuda":
        _stand_in_cuda_events()
    torch.set_grad_enabled(False)
    dtype = getattr(torch, spec["dtype"])
    pipe = StableDiffusionPipeline.from_pretrained(spec["model_dir"], torch_dtype=dtype, safety_checker=None)
    pipe = pipe.to(spec["device"])
    if spec.get("vae_dir"):
        pipe.vae = AutoencoderTiny.from_pretrained(spec["vae_dir"], torch_dtype=dtype).to(spec["device"])
    versions = {"torch": torch.__version__}
    for name in ("diffusers", "transformers", "streamdiffusion", "huggingface_hub"):
        versions[name] = getattr(sys.modules.get(name) or __import__(name), "__version__", "?")
    print("LOADED " + json.dumps({"load_s": time.perf_counter() - started, "versions": versions}), flush=True)
    for setting in spec["settings"]:
        try:
            result = {"name": setting["name"], **run_setting(pipe, setting, spec)}
        except Exception as error:  # one setting failing must not lose the others: report it, go on
            result = {"name": setting["name"], "error": f"{type(error).__name__}: {error}"}
            traceback.print_exc()
        print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
