"""The TensorRT engine cache: a key over everything that changes an engine, and the files it names.

A serialized engine is only valid for the exact graph, weights, shapes, precision, TensorRT version and
GPU it was built for. EngineSpec lists all of them; its compute_hash() (as vLLM's configs do) names the
engine file, so a changed model, LoRA, batch, profile, TensorRT or GPU finds no file and builds anew
instead of loading a stale engine. The stream's own width and height are not in the key: any size
inside the resolution profile runs on the same engine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from engine.config.schema import ModelConfig, StreamConfig
from engine.core.errors import DreamwireError

ONNX_OPSET = 17
ENGINE_FORMAT = 1  # bump when the export or the build changes in a way the other fields don't show
ENGINE_KINDS = ("unet", "controlnet")  # EngineSpec.kind: the engine files' name prefixes
_FILES = (("", ".engine"), ("", ".json"), (".", ".partial"))  # an engine, its record, a killed write's leftover
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".json")


@dataclass(frozen=True)
class EngineSpec:
    """Everything that changes a UNet engine. Sizes are in pixels; the profile is square per side."""

    model_id: str
    weights: str  # fingerprint of the model's weight files (see weights_fingerprint)
    vae_id: str
    vae_weights: str
    # LoRAs in order: (id, fused weight), or (id, None) for a live one (the engine's lora_scales input); the
    # IP-Adapter as ("ip_adapter:<model>", None) (its tokens and scale are inputs)
    loras: tuple[tuple[str, float | None], ...]
    unet_rows: int  # the most rows per UNet call (batch profile 1..unet_rows, tuned for unet_rows)
    min_size: int
    opt_size: int
    max_size: int
    dtype: str  # "float16", …: the ONNX graph's precision, which a strongly typed engine keeps
    tensorrt_version: str
    torch_version: str  # the ONNX exporter's version
    onnx_opset: int
    gpu_name: str
    compute_capability: tuple[int, int]
    engine_format: int = ENGINE_FORMAT
    feature_bank_frames: int = 0  # ring slots of the feature bank's inputs (0: an engine without them)
    # ControlNets (engine/backends/tensorrt_controlnet.py). kind: "unet" or "controlnet" (the file name's prefix);
    # residual_inputs: the UNet graph's ControlNet residual inputs (0 without ControlNets); controlnet_id and
    # controlnet_weights: a ControlNet engine's net (its base is model_id, weights: a net built from it differs).
    kind: str = "unet"
    residual_inputs: int = 0
    controlnet_id: str = ""
    controlnet_weights: str = ""

    def compute_hash(self) -> str:
        """A short hex key: equal for equal specs, different when any field differs."""
        fields = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(fields.encode()).hexdigest()[:24]

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def engine_spec(
    model: ModelConfig,
    stream: StreamConfig,
    unet_rows: int,
    dtype: torch.dtype,
    device: torch.device,
    loras: tuple[tuple[str, float | None], ...] = (),
) -> EngineSpec:
    """The spec of the UNet engine for these settings. unet_rows comes from the pipeline's CFG layout."""
    check_profile(stream)
    name, capability = _gpu(device)
    vae_id = model.vae or "(the model's own)"
    return EngineSpec(
        model_id=model.id,
        weights=weights_fingerprint(model.id),
        vae_id=vae_id,
        vae_weights=weights_fingerprint(model.vae) if model.vae else "",
        loras=loras,
        unet_rows=unet_rows,
        min_size=stream.trt_min_size,
        opt_size=stream.trt_opt_size,
        max_size=stream.trt_max_size,
        dtype=str(dtype).removeprefix("torch."),
        tensorrt_version=tensorrt_version(),
        torch_version=torch.__version__,
        onnx_opset=ONNX_OPSET,
        gpu_name=name,
        compute_capability=capability,
    )


def controlnet_spec(unet: EngineSpec, net_id: str) -> EngineSpec:
    """The spec of ControlNet `net_id`'s engine beside the UNet engine `unet`: the same base, rows, resolution
    profile (so the two engines take the same sizes), precision, TensorRT and GPU."""
    return dataclasses.replace(
        unet, kind="controlnet", residual_inputs=0, controlnet_id=net_id, controlnet_weights=weights_fingerprint(net_id)
    )


def check_profile(stream: StreamConfig) -> None:
    """The stream's size must lie inside the engine's resolution profile."""
    low, high = stream.trt_min_size, stream.trt_max_size
    for name, size in (("width", stream.width), ("height", stream.height)):
        if not low <= size <= high:
            raise DreamwireError(
                f"stream.{name} {size} is outside the TensorRT resolution profile [{low}, {high}]: "
                f"set stream.trt_min_size / stream.trt_max_size to include it (one rebuild)"
            )


def _gpu(device: torch.device) -> tuple[str, tuple[int, int]]:
    if device.type != "cuda":
        return device.type, (0, 0)
    major, minor = torch.cuda.get_device_capability(device)
    return torch.cuda.get_device_name(device), (major, minor)


def tensorrt_version() -> str:
    try:
        import tensorrt
    except ImportError:
        return "not installed"
    return str(tensorrt.__version__)


def weights_fingerprint(model_id: str) -> str:
    """A local folder: its weight and config files' names, sizes and modification times. A Hugging Face
    id: the commit of its cached snapshot. Anything else (a built-in model): its id alone."""
    folder = Path(model_id).expanduser()
    if folder.is_dir():
        return _folder_fingerprint(folder)
    snapshot = _hub_snapshot(model_id)
    return f"hub:{snapshot}" if snapshot else f"id:{model_id}"


def _folder_fingerprint(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in _WEIGHT_SUFFIXES:
            stat = path.stat()
            digest.update(f"{path.relative_to(folder).as_posix()}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return f"folder:{digest.hexdigest()[:16]}"


def _hub_snapshot(model_id: str) -> str | None:
    """The commit that the local Hugging Face cache's `main` ref points at, read without the network."""
    if model_id.count("/") != 1:
        return None
    from huggingface_hub.constants import HF_HUB_CACHE

    ref = Path(HF_HUB_CACHE) / f"models--{model_id.replace('/', '--')}" / "refs" / "main"
    return ref.read_text(encoding="utf-8").strip() if ref.is_file() else None


# ---- the cache folder and its files ---------------------------------------------------------------


def default_cache_dir() -> Path:
    """$DREAMWIRE_CACHE_DIR, else the user cache dir: %LOCALAPPDATA%\\dreamwire\\Cache, ~/Library/Caches/dreamwire
    or $XDG_CACHE_HOME/dreamwire (~/.cache/dreamwire); engines live in its engines/ folder."""
    override = os.environ.get("DREAMWIRE_CACHE_DIR")
    if override:
        return Path(override).expanduser() / "engines"
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local") / "dreamwire" / "Cache"
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches" / "dreamwire"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dreamwire"
    return base / "engines"


def engine_path(spec: EngineSpec, cache_dir: Path | None = None) -> Path:
    """unet-KEY.engine (controlnet-KEY.engine) in the cache folder; its spec sits beside it as unet-KEY.json."""
    return (cache_dir or default_cache_dir()) / f"{spec.kind}-{spec.compute_hash()}.engine"


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write into a temporary file beside `path`, then rename: readers see the whole file or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_engine(spec: EngineSpec, engine: bytes, cache_dir: Path | None = None) -> Path:
    """The engine, then its spec (for `dreamwire engines list`), each written atomically."""
    path = engine_path(spec, cache_dir)
    write_atomically(path, lambda file: file.write(engine))
    record = json.dumps({"key": spec.compute_hash(), **spec.describe()}, indent=2).encode()
    write_atomically(path.with_suffix(".json"), lambda file: file.write(record))
    return path


@dataclass(frozen=True)
class CachedEngine:
    path: Path
    size_bytes: int
    spec: dict[str, Any]  # the JSON record; empty when it is missing or unreadable


def list_engines(cache_dir: Path | None = None) -> list[CachedEngine]:
    folder = cache_dir or default_cache_dir()
    engines = []
    for path in sorted(path for kind in ENGINE_KINDS for path in folder.glob(f"{kind}-*.engine")):
        try:
            spec = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            spec = {}
        engines.append(CachedEngine(path, path.stat().st_size, spec))
    return engines


def clear_engines(cache_dir: Path | None = None) -> int:
    """Delete the cached engines, their records, and any partial file or ONNX staging folder that a killed build
    left behind."""
    folder = cache_dir or default_cache_dir()
    removed = 0
    for pattern in (f"{prefix}{kind}-*{suffix}" for kind in ENGINE_KINDS for prefix, suffix in _FILES):
        for path in folder.glob(pattern):
            path.unlink(missing_ok=True)
            removed += path.suffix == ".engine"
    for staging in folder.glob(".onnx-*"):
        shutil.rmtree(staging, ignore_errors=True)
    return removed
