"""The GPU bench: ours (eager, compile, cuda_graph, compile + cuda_graph) against the bare UNet+VAE floor and
the reference StreamDiffusion 0.1.1, on an sd-turbo-architecture model with random weights, in one run that
fits a lent GPU's few minutes. README "GPU bench" gives the device command.

    python -m engine.bench.gpu --out DIR [--budget-s 400] [--reference-path DIR] [--tiny]

Per setting (img2img 1 step and 2 steps (cfg self), txt2img-turbo 1 step at 512x512; img2img 1 step at
768x768 and 1024x576): fps with a host frame in and a host frame out (what the engine does per frame), the
p50/p95 frame time, NVML power and J/frame; the floor (encode + UNet + decode back to back, replayed as one
CUDA graph); the reference, timed by the same loop in its own process (its packages first on PYTHONPATH);
then a torch.profiler trace of img2img 1 step with the best backend, read for launch gaps, host syncs,
copies, casts and time per stage. Everything is written to DIR (results.json, results.md, profile_kernels.txt,
profile_trace_BACKEND.json.gz) after each measurement, so a run cut short keeps what it measured; a watchdog ends the
run at the budget (plus a short grace) whatever is running. --tiny is the CPU dry run: the built-in tiny
model at small sizes, same code paths (cuda_graph is skipped on a CPU, with the reason).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import gzip
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.backends.select import select_backends
from engine.bench.gpu_profile import analyse_trace, format_analysis
from engine.bench.gpu_reference import PROMPT, bench_frames, timed_loop
from engine.config.schema import FilterConfig, ModelConfig, PromptConfig, StreamConfig
from engine.core.errors import DreamwireError
from engine.pipeline.codec import make_codec
from engine.pipeline.models import Models, load_models, resolve_device
from engine.pipeline.stream import StreamPipeline

log = logging.getLogger("dreamwire.bench_gpu")
ROOT = Path(__file__).resolve().parents[2]  # the repository: the reference process imports our runner from it
BACKENDS = {  # name: (stream.acceleration, stream.cuda_graph)
    "eager": ("none", False),
    "cuda_graph": ("none", True),
    "compile": ("compile", False),
    "compile+cuda_graph": ("compile", True),
}
FIRST_COMPILE_ESTIMATE_S = 150.0  # UNet + TAESD through Inductor, cold, before any compile was timed here
PROFILE_RESERVE_S = 45.0  # kept for the profile and the final write when deciding to start a compile
WATCHDOG_GRACE_S = 25.0


@dataclass(frozen=True)
class Setting:
    name: str
    mode: str
    width: int
    height: int
    t_index_list: list[int]
    cfg_type: str
    guidance: float

    def stream(self, backend: str) -> StreamConfig:
        acceleration, cuda_graph = BACKENDS[backend]
        return StreamConfig(
            mode=self.mode,
            width=self.width,
            height=self.height,
            t_index_list=self.t_index_list,
            cfg_type=self.cfg_type,
            acceleration=acceleration,
            cuda_graph=cuda_graph,
        )

    @property
    def unet_rows(self) -> int:  # cfg none and self: one row per step (f = 1)
        return len(self.t_index_list)


SETTINGS = [
    Setting("img2img-1step-512", "img2img", 512, 512, [35], "none", 1.0),
    Setting("img2img-2step-self-512", "img2img", 512, 512, [32, 45], "self", 1.2),
    Setting("txt2img-turbo-1step-512", "txt2img-turbo", 512, 512, [0], "none", 1.0),
    Setting("img2img-1step-768", "img2img", 768, 768, [35], "none", 1.0),
    Setting("img2img-1step-1024x576", "img2img", 1024, 576, [35], "none", 1.0),
]


def tiny_settings() -> list[Setting]:
    """The same settings at 1/8 of the size (the tiny model's dry run)."""
    return [
        Setting(s.name, s.mode, s.width // 8, s.height // 8, s.t_index_list, s.cfg_type, s.guidance) for s in SETTINGS
    ]


class Budget:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.perf_counter()

    def remaining(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


@dataclass
class Report:
    """Everything measured so far; write() rewrites results.json and results.md (called after each step)."""

    out: Path
    data: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for key in ("measurements", "floor", "reference", "profile"):
            self.data.setdefault(key, {})
        for key in ("skipped", "errors", "timeline"):
            self.data.setdefault(key, [])

    def put(self, section: str, setting: str, key: str, value: Any) -> None:
        with self.lock:
            self.data[section].setdefault(setting, {})[key] = value
        self.write()

    def note(self, kind: str, text: str) -> None:
        log.warning("%s: %s", kind, text) if kind != "timeline" else log.info("%s", text)
        with self.lock:
            self.data[kind].append(text)
        self.write()

    def write(self) -> None:
        with self.lock:
            text = json.dumps(self.data, indent=2, default=str)
            markdown = format_markdown(self.data)
        (self.out / "results.json").write_text(text)
        (self.out / "results.md").write_text(markdown)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _quiet_libraries()
    torch.set_grad_enabled(False)
    report = Report(Path(args.out))
    budget = Budget(args.budget_s)
    _start_watchdog(report, budget)
    try:
        run(args, report, budget)
    except Exception as error:  # the bench must always write what it has: record, then fall through
        report.note("errors", f"run stopped: {type(error).__name__}: {error}")
        traceback.print_exc()
    report.data["total_s"] = budget.elapsed()
    report.write()
    print(format_markdown(report.data, profiles=False))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine.bench.gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for results.json, results.md and the profile")
    parser.add_argument("--budget-s", type=float, default=400.0, help="total seconds (default 400)")
    parser.add_argument("--tiny", action="store_true", help="dry run: the tiny model at 1/8 size (CPU)")
    parser.add_argument("--device", default="auto", help="auto, cuda or cpu (default auto)")
    parser.add_argument("--dtype", default="auto", help="auto (float16 on CUDA, float32 on CPU), float16, bfloat16")
    parser.add_argument("--settings", help="comma-separated setting names (default: all)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated, of {', '.join(BACKENDS)}")
    parser.add_argument("--warmup-s", type=float, default=0.5, help="warm-up seconds per measurement")
    parser.add_argument("--timed-s", type=float, default=2.0, help="timed seconds per measurement")
    parser.add_argument("--reference-path", help="folder with the reference's packages (pip --target): put first")
    parser.add_argument("--reference-python", help="python for the reference (default: this one)")
    parser.add_argument("--reference-timeout-s", type=float, default=200.0, help="cap on the reference process")
    parser.add_argument("--profile-frames", type=int, default=20)
    parser.add_argument("--no-profile", action="store_true")
    return parser


def run(args: argparse.Namespace, report: Report, budget: Budget) -> None:
    device, dtype = resolve_device(args.device, args.dtype)
    settings = tiny_settings() if args.tiny else SETTINGS
    if args.settings:
        wanted = args.settings.split(",")
        settings = [s for s in settings if s.name in wanted]
    backends = [b for b in args.backends.split(",") if b]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise DreamwireError(f"--backends {unknown} unknown (allowed: {', '.join(BACKENDS)})")
    report.data["env"] = environment(device, dtype)
    report.data["args"] = vars(args)
    report.write()

    started = time.perf_counter()
    models = _build_models(args.tiny, device, dtype)
    report.data["models"] = {
        "kind": "tiny (built-in)" if args.tiny else "sd-turbo architecture, random weights",
        "unet_parameters": sum(p.numel() for p in models.unet.parameters()),
        "text_encoder_parameters": sum(p.numel() for p in models.text_encoder.parameters()),
        "vae_parameters": sum(p.numel() for p in models.vae.parameters()),
        "build_s": time.perf_counter() - started,
    }
    report.note("timeline", f"models built in {time.perf_counter() - started:.1f} s")
    reference_folder = None
    if args.reference_path or args.reference_python:
        reference_folder = _save_for_reference(models, args.tiny, report)

    # 1. Eager and eager + CUDA graph: quick, and what every later figure compares with.
    for setting in settings:
        for backend in ("eager", "cuda_graph"):
            if backend in backends:
                measure(report, budget, models, setting, backend, args)
        floor(report, budget, models, setting, "none")
    if device.type == "cuda" and settings:
        _guarded(
            report,
            "channels_last check",
            lambda: report.put("floor", "unet-only", "memory_format", channels_last_check(models, settings[0])),
        )
    # 2. The reference, same settings, its own process.
    if reference_folder is not None:
        _guarded(report, "reference", lambda: run_reference(report, budget, args, reference_folder, settings, device))
        shutil.rmtree(reference_folder[0].parent, ignore_errors=True)  # gigabytes on the GPU machine's disk
    # 3. Where the time goes: a profile of img2img 1 step with the best backend so far (before the compiles,
    #    whose length is the least predictable part of the run).
    if not args.no_profile and settings:
        _guarded(report, "profile", lambda: profile_best(report, budget, models, settings[0], args))
    # 4. torch.compile: a minute or more per new shape, so as far as the budget goes, 512x512 first, and
    #    settings whose UNet shape is already compiled (txt2img-turbo after img2img) before new shapes.
    compile_backends = [b for b in ("compile", "compile+cuda_graph") if b in backends]
    compiled_shapes: set[tuple[int, int, int]] = set()
    compile_times: list[float] = []  # setup seconds of each new shape's compile
    first_estimate = FIRST_COMPILE_ESTIMATE_S if device.type == "cuda" else 120.0
    for setting in _compile_order(settings) if compile_backends else []:
        shape = (setting.unet_rows, setting.width, setting.height)
        estimate = 15.0 if shape in compiled_shapes else 1.2 * max(compile_times, default=first_estimate / 1.2)
        needed = estimate + PROFILE_RESERVE_S + len(compile_backends) * (args.warmup_s + args.timed_s + 5)
        if budget.remaining() < needed:
            report.note("skipped", f"{setting.name} compile: {budget.remaining():.0f} s left, needs ~{needed:.0f} s")
            continue
        for backend in compile_backends:
            result = measure(report, budget, models, setting, backend, args)
            if backend == "compile" and result and "setup_s" in result and shape not in compiled_shapes:
                compile_times.append(result["setup_s"])
                compiled_shapes.add(shape)
        floor(report, budget, models, setting, "compile")
    # 5. If a compiled backend now leads, its profile too.
    if not args.no_profile and settings:
        _guarded(report, "profile", lambda: profile_best(report, budget, models, settings[0], args))


def _compile_order(settings: list[Setting]) -> list[Setting]:
    """The first setting, then those sharing its UNet shape, then the rest in order."""
    if not settings:
        return []
    first = settings[0]
    same = [s for s in settings[1:] if (s.unet_rows, s.width, s.height) == (first.unet_rows, first.width, first.height)]
    return [first, *same, *[s for s in settings[1:] if s not in same]]


def _guarded(report: Report, what: str, action: Callable[[], Any]) -> Any:
    try:
        return action()
    except Exception as error:  # one part failing must not lose the rest of the run
        report.note("errors", f"{what}: {type(error).__name__}: {error}")
        traceback.print_exc()
        return None


# ---- ours ----------------------------------------------------------------------------------------------------


def measure(
    report: Report, budget: Budget, models: Models, setting: Setting, backend: str, args: argparse.Namespace
) -> dict[str, Any] | None:
    """One setting with one backend: prepare (compile / capture), warm up, then args.timed_s of frames."""
    if backend.endswith("cuda_graph") and models.device.type != "cuda":
        report.put("measurements", setting.name, backend, {"skipped": "needs a CUDA device (this run is on CPU)"})
        return None
    if budget.remaining() < args.warmup_s + args.timed_s + 5:
        report.note("skipped", f"{setting.name} {backend}: out of budget ({budget.remaining():.0f} s left)")
        return None
    report.note("timeline", f"{budget.elapsed():.0f} s: ours {setting.name} {backend}")
    try:
        result = _measure(models, setting, backend, args)
    except Exception as error:  # a failing backend is a finding, recorded with its message
        result = {"error": f"{type(error).__name__}: {error}"}
        traceback.print_exc()
    finally:
        _free(models.device)
    report.put("measurements", setting.name, backend, result)
    return result


def _measure(models: Models, setting: Setting, backend: str, args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    pipeline = _pipeline(models, setting, backend)
    setup_s = time.perf_counter() - started
    call = _frame_call(pipeline, setting)
    result = timed_loop(call, lambda: _sync(models.device), args.warmup_s, args.timed_s)
    result["setup_s"] = setup_s
    result["acceleration_run"] = pipeline.acceleration
    result["captures"] = getattr(pipeline._run, "captures", 0)
    return result


def _pipeline(models: Models, setting: Setting, backend: str) -> StreamPipeline:
    prompt = PromptConfig(text=PROMPT, guidance=setting.guidance, delta=1.0, seed=2)
    return StreamPipeline.prepared(models, setting.stream(backend), prompt, FilterConfig())


def _frame_call(pipeline: StreamPipeline, setting: Setting) -> Callable[[int], np.ndarray]:
    """One engine frame: a host uint8 frame in (FrameLoader), step(), a host uint8 frame out (HostFrames)."""
    load, to_host = pipeline.frame_loader(), pipeline.host_frames()
    frames = bench_frames(8, setting.width, setting.height)
    txt2img = setting.mode != "img2img"

    def call(index: int) -> np.ndarray:
        image = None if txt2img else load(frames[index % len(frames)][None])
        return to_host(pipeline.step(image))

    return call


# ---- the floor -----------------------------------------------------------------------------------------------


def floor(report: Report, budget: Budget, models: Models, setting: Setting, acceleration: str) -> None:
    """encode + UNet + decode at this setting's shapes, back to back, with no pipeline around them."""
    if budget.remaining() < 10:
        report.note("skipped", f"{setting.name} floor ({acceleration}): out of budget")
        return
    try:
        result = _floor(models, setting, acceleration)
    except Exception as error:  # recorded, the run goes on
        result = {"error": f"{type(error).__name__}: {error}"}
        traceback.print_exc()
    finally:
        _free(models.device)
    report.put("floor", setting.name, "eager modules" if acceleration == "none" else "compiled modules", result)


def _floor(models: Models, setting: Setting, acceleration: str) -> dict[str, Any]:
    device, dtype = models.device, models.dtype
    stream = setting.stream("compile" if acceleration == "compile" else "eager")
    codec = make_codec(models.vae, torch.Generator())
    backends = select_backends(stream, models.config, models.unet, models.vae, codec, setting.unet_rows, device, dtype)
    rows, s = setting.unet_rows, codec.scale_factor
    latent = (rows, codec.latent_channels, setting.height // s, setting.width // s)
    x = torch.randn(latent, device=device, dtype=dtype)
    t = torch.full((rows,), 499, device=device, dtype=torch.long)
    width = int(models.unet.config.cross_attention_dim)
    embeddings = torch.randn((rows, models.tokenizer.model_max_length, width), device=device, dtype=dtype)
    image = torch.rand((1, setting.height, setting.width, 3), device=device, dtype=dtype).permute(0, 3, 1, 2)
    encode = setting.mode == "img2img"

    def body() -> torch.Tensor:
        if encode:
            backends.vae.encode(image)
        eps = backends.unet(x, t, embeddings)
        return backends.vae.decode(eps[-1:])

    result = {"eager_ms": _time_calls(body, device, seconds=1.0)}
    if device.type == "cuda":
        graph = _capture(body, device)
        result["graph_ms"] = _time_calls(graph.replay, device, seconds=1.0)
    result["best_ms"] = min(result.values())
    result["fps"] = 1000.0 / result["best_ms"]
    return result


def channels_last_check(models: Models, setting: Setting) -> dict[str, Any]:
    """The UNet alone (graph-replayed) in NCHW and in channels_last: does channels_last pay on this GPU?"""
    device, dtype, rows = models.device, models.dtype, setting.unet_rows
    x = torch.randn((rows, 4, setting.height // 8, setting.width // 8), device=device, dtype=dtype)
    t = torch.full((rows,), 499, device=device, dtype=torch.long)
    e = torch.randn((rows, 77, int(models.unet.config.cross_attention_dim)), device=device, dtype=dtype)
    result = {}
    for name, memory_format in (("contiguous_ms", torch.contiguous_format), ("channels_last_ms", torch.channels_last)):
        models.unet.to(memory_format=memory_format)
        graph = _capture(lambda: models.unet(x, t, encoder_hidden_states=e, return_dict=False)[0], device)
        result[name] = _time_calls(graph.replay, device, seconds=1.0)
        del graph
    models.unet.to(memory_format=torch.channels_last)  # as the eager backend leaves it
    return result


def _capture(body: Callable[[], torch.Tensor], device: torch.device) -> torch.cuda.CUDAGraph:
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            body()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    return graph


def _time_calls(call: Callable[[], Any], device: torch.device, seconds: float) -> float:
    """ms per call: a few warm-up calls, then calls for about `seconds`, synchronised at the ends only."""
    for _ in range(2):
        call()
    _sync(device)
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        for _ in range(5):
            call()
        calls += 5
        _sync(device)  # keeps the host from queueing far ahead; one sync per five calls
    return 1000.0 * (time.perf_counter() - start) / calls


# ---- the reference -------------------------------------------------------------------------------------------


def _save_for_reference(models: Models, tiny: bool, report: Report) -> tuple[Path, Path] | None:
    from engine.bench.gpu_models import save_for_reference

    started = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="dreamwire-bench-model-"))
    try:
        saved = save_for_reference(models, folder / "model")
    except Exception as error:  # without the folder there is no reference run; ours still runs
        report.note("errors", f"saving the model folder for the reference: {type(error).__name__}: {error}")
        traceback.print_exc()
        return None
    report.note("timeline", f"model folder for the reference saved in {time.perf_counter() - started:.1f} s")
    return saved


def run_reference(
    report: Report,
    budget: Budget,
    args: argparse.Namespace,
    folders: tuple[Path, Path],
    settings: list[Setting],
    device: torch.device,
) -> None:
    """The reference in its own process; its RESULT lines are recorded as they come."""
    timeout = min(args.reference_timeout_s, budget.remaining() - PROFILE_RESERVE_S)
    if timeout < 30:
        report.note("skipped", f"reference: {budget.remaining():.0f} s left")
        return
    spec = {
        "model_dir": str(folders[0]),
        "vae_dir": str(folders[1]),
        "dtype": str(report.data["env"]["dtype"]).removeprefix("torch."),
        "device": device.type,
        "warmup_s": args.warmup_s,
        "timed_s": args.timed_s,
        "settings": [asdict(s) for s in settings],
    }
    path = [p for p in (args.reference_path, str(ROOT)) if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), "PYTHONUNBUFFERED": "1"}
    python = args.reference_python or sys.executable
    command = [python, "-m", "engine.bench.gpu_reference", json.dumps(spec)]
    report.note("timeline", f"{budget.elapsed():.0f} s: reference ({python}, PYTHONPATH={env['PYTHONPATH']})")
    with tempfile.TemporaryFile(mode="w+") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=str(ROOT), env=env)
        timer = threading.Timer(timeout, process.kill)
        timer.start()
        try:
            for line in process.stdout or []:
                if line.startswith("RESULT "):
                    result = json.loads(line[len("RESULT ") :])
                    report.put("reference", result.pop("name"), "reference", result)
                elif line.startswith("LOADED "):
                    report.data["reference_env"] = json.loads(line[len("LOADED ") :])
            process.wait()
        finally:
            timer.cancel()
        stderr.seek(0)
        tail = stderr.read()[-3000:]
    if process.returncode != 0:
        report.note("errors", f"reference exited {process.returncode} (timeout {timeout:.0f} s): {tail.strip()}")


# ---- the profile ---------------------------------------------------------------------------------------------


def profile_best(report: Report, budget: Budget, models: Models, setting: Setting, args: argparse.Namespace) -> None:
    """Profile `setting` with its fastest measured backend (unless it was profiled already) and, for the stage
    split that a graph replay hides, the same acceleration without the graph."""
    measured = report.data["measurements"].get(setting.name, {})
    ranked = sorted((r["fps"], b) for b, r in measured.items() if isinstance(r, dict) and "fps" in r)
    if not ranked:
        report.note("skipped", f"profile: no backend measured for {setting.name}")
        return
    best = ranked[-1][1]
    done = report.data["profile"].get(setting.name, {})
    runs = [best] + ([best.removesuffix("+cuda_graph").replace("cuda_graph", "eager")] if "cuda_graph" in best else [])
    for backend in [b for b in runs if b not in done]:
        if budget.remaining() < 12:
            report.note("skipped", f"profile {backend}: out of budget")
            break
        report.note("timeline", f"{budget.elapsed():.0f} s: profile {setting.name} {backend}")
        trace = f"profile_trace_{backend.replace('+', '_')}.json.gz" if backend == best else None
        analysis, table = _profile(models, setting, backend, args, report.out, trace)
        report.put("profile", setting.name, backend, analysis)
        with (report.out / "profile_kernels.txt").open("a") as kernels:
            kernels.write(f"## {setting.name}, {backend}\n\n{table}\n\n")
        _free(models.device)


def _profile(
    models: Models, setting: Setting, backend: str, args: argparse.Namespace, out: Path, trace_name: str | None
) -> tuple[dict[str, Any], str]:
    from torch.profiler import ProfilerActivity, profile, record_function

    pipeline = _pipeline(models, setting, backend)
    _annotate(pipeline)
    load, to_host = pipeline.frame_loader(), pipeline.host_frames()
    frames = bench_frames(8, setting.width, setting.height)
    txt2img = setting.mode != "img2img"

    def frame(index: int) -> None:
        with record_function("frame"):
            with record_function("load"):
                image = None if txt2img else load(frames[index % len(frames)][None])
            with record_function("step"):
                output = pipeline.step(image)
            with record_function("to_host"):
                to_host(output)

    for index in range(5):
        frame(index)
    _sync(models.device)
    cuda = models.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for index in range(args.profile_frames):
            frame(index)
        _sync(models.device)
    with tempfile.TemporaryDirectory() as folder:
        trace = Path(folder) / "trace.json"
        prof.export_chrome_trace(str(trace))
        analysis = analyse_trace(trace, args.profile_frames)
        if trace_name:
            with gzip.open(out / trace_name, "wb") as packed:
                packed.write(trace.read_bytes())
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=90)
    analysis["markdown"] = format_analysis(analysis)
    return analysis, table


def _annotate(pipeline: StreamPipeline) -> None:
    """record_function ranges around the UNet and VAE calls (seen where the step is not a graph replay)."""
    from torch.profiler import record_function

    def named(name: str, call: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def wrapped(*args: Any, **kwargs: Any) -> torch.Tensor:
            with record_function(name):
                return call(*args, **kwargs)

        return wrapped

    pipeline.unet = named("unet", pipeline.unet)
    pipeline.codec.encode = named("encode", pipeline.codec.encode)  # type: ignore[method-assign]
    pipeline.codec.decode = named("decode", pipeline.codec.decode)  # type: ignore[method-assign]


# ---- set-up and reporting ------------------------------------------------------------------------------------


def _build_models(tiny: bool, device: torch.device, dtype: torch.dtype) -> Models:
    if tiny:
        name = {torch.float16: "float16", torch.bfloat16: "bfloat16"}.get(dtype, "float32")
        return load_models(ModelConfig(id="tiny", vae="tiny-taesd", dtype=name, device=str(device)))
    from engine.bench.gpu_models import build_sd_turbo

    return build_sd_turbo(device, dtype)


def environment(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
        "dtype": str(dtype),
        "cpu_threads": torch.get_num_threads(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }
    for name in ("diffusers", "transformers", "numpy", "pydantic", "triton"):
        with contextlib.suppress(ImportError):
            env[name] = __import__(name).__version__
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        env.update(
            gpu=properties.name,
            capability=f"{properties.major}.{properties.minor}",
            multiprocessors=properties.multi_processor_count,
            memory_gib=round(properties.total_memory / 2**30, 1),
            cudnn=torch.backends.cudnn.version(),
        )
        with contextlib.suppress(Exception):
            import pynvml

            pynvml.nvmlInit()
            env["driver"] = pynvml.nvmlSystemGetDriverVersion()
            handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
            env["power_limit_w"] = pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0
    return env


def _quiet_libraries() -> None:
    for name in ("diffusers", "transformers", "httpx", "huggingface_hub", "torch._inductor", "torch._dynamo"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with contextlib.suppress(ImportError):
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()


def _start_watchdog(report: Report, budget: Budget) -> None:
    """Past the budget (and a grace), write what there is and leave, whatever is running (a long compile)."""

    def stop() -> None:
        report.data.setdefault("errors", []).append(
            f"watchdog: stopped at {budget.elapsed():.0f} s (budget {budget.seconds:.0f} s); results are partial"
        )
        report.data["total_s"] = budget.elapsed()
        report.write()
        print(format_markdown(report.data, profiles=False), flush=True)
        os._exit(3)

    timer = threading.Timer(budget.seconds + WATCHDOG_GRACE_S, stop)
    timer.daemon = True
    timer.start()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _fps(entry: Any) -> float | None:
    return entry.get("fps") if isinstance(entry, dict) else None


def summary_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Per setting: fps per backend, the best, the floor, the reference, and the ratios the targets name."""
    rows = []
    names = list(dict.fromkeys([*data.get("measurements", {}), *data.get("reference", {})]))
    for name in names:
        ours = data.get("measurements", {}).get(name, {})
        fps = {b: _fps(ours.get(b)) for b in BACKENDS}
        measured = {b: v for b, v in fps.items() if v}
        best = max(measured, key=lambda b: measured[b]) if measured else None
        floors = [v.get("best_ms") for v in data.get("floor", {}).get(name, {}).values() if isinstance(v, dict)]
        floor_ms = min([f for f in floors if f], default=None)
        reference = data.get("reference", {}).get(name, {}).get("reference", {})
        ref_fps = _fps(reference)
        best_entry = ours.get(best, {}) if best else {}
        rows.append(
            {
                "setting": name,
                **fps,
                "best": best,
                "best_fps": measured.get(best) if best else None,
                "floor_fps": 1000.0 / floor_ms if floor_ms else None,
                "best_over_floor": measured[best] * floor_ms / 1000.0 if best and floor_ms else None,
                "reference_fps": ref_fps,
                "best_over_reference": measured[best] / ref_fps if best and ref_fps else None,
                "j_per_frame": best_entry.get("j_per_frame"),
                "reference_j_per_frame": reference.get("j_per_frame") if isinstance(reference, dict) else None,
                "reference_error": reference.get("error") if isinstance(reference, dict) else None,
            }
        )
    return rows


def format_markdown(data: dict[str, Any], profiles: bool = True) -> str:
    """The report as markdown; without the (long) profile sections for the terminal, where the table must be
    the last thing printed."""
    env = data.get("env", {})
    device = env.get("gpu") or env.get("device", "?")
    lines = [
        "# dreamwire GPU bench",
        "",
        f"{device}; torch {env.get('torch')} (CUDA {env.get('cuda')}), {env.get('dtype')}; driver "
        f"{env.get('driver', '?')}; {env.get('date_utc', '')} UTC; models: {data.get('models', {}).get('kind', '?')}",
        "",
        "fps: a host frame in and a host frame out per step (what the engine does). floor: encode + UNet + "
        "decode back to back (CUDA graph), no pipeline. J/frame: NVML energy over the timed run.",
        "",
        "| setting | eager | cuda_graph | compile | compile+cuda_graph | floor | best/floor | reference "
        "| best/reference | J/frame (best) | J/frame (reference) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(value: Any, digits: int = 1) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    for row in summary_rows(data):
        backends = " | ".join(cell(row[b]) for b in BACKENDS)
        reference = cell(row["reference_fps"]) if not row["reference_error"] else "error"
        lines.append(
            f"| {row['setting']} | {backends} | {cell(row['floor_fps'])} | {cell(row['best_over_floor'], 2)} "
            f"| {reference} | {cell(row['best_over_reference'], 2)} | {cell(row['j_per_frame'], 3)} "
            f"| {cell(row['reference_j_per_frame'], 3)} |"
        )
    memory = data.get("floor", {}).get("unet-only", {}).get("memory_format")
    if memory:
        lines += ["", f"UNet alone (graph replay, first setting): {json.dumps(memory)}"]
    for name, entries in data.get("measurements", {}).items():
        for backend, entry in entries.items():
            if isinstance(entry, dict) and ("error" in entry or "skipped" in entry):
                lines.append(f"- {name} {backend}: {entry.get('error') or entry.get('skipped')}")
    for kind in ("skipped", "errors"):
        if data.get(kind):
            lines += ["", f"## {kind}", ""] + [f"- {text}" for text in data[kind]]
    for name, entries in data.get("profile", {}).items() if not profiles else []:
        for backend, a in entries.items():
            kinds = ", ".join(f"{k} {v}" for k, v in list(a.get("kernel_us_per_frame_by_kind", {}).items())[:4])
            lines.append(
                f"- profile {name} {backend}: GPU busy {a.get('gpu_busy_us_per_frame', 0):.0f} us/frame, idle "
                f"{a.get('gpu_idle_us_per_frame', 0):.0f} us/frame, "
                f"{a.get('host_syncs_per_frame', 0):.1f} host syncs/frame; top kinds (us/frame): {kinds}"
            )
    for name, entries in data.get("profile", {}).items() if profiles else []:
        for backend, analysis in entries.items():
            lines += ["", f"## profile: {name}, {backend}", "", analysis.get("markdown", "")]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
