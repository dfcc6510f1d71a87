"""The TensorRT UNet backend (TensorRT 10 or later; untested on GPU hardware here, see the README).

build_unet_backend() loads the cached engine for the spec's key, or exports the UNet to ONNX and builds
one (strongly typed: the graph's float16 stays float16; one optimisation profile over batch 1..rows and
the spec's resolution range, so a change of size needs no rebuild), writes it atomically and loads it.

The runtime uses named I/O tensors only (set_input_shape, set_tensor_address, execute_async_v3 on the
current torch CUDA stream; no binding indices). Its input and output buffers are allocated once per
shape and reused: the returned ε is that output buffer, so it must be consumed before the next call (the
pipeline's CFG step does). Any failure is a DreamwireError naming the engine file and the cache key;
nothing here falls back to eager PyTorch.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from engine.backends.engine_cache import EngineSpec, engine_path, save_engine
from engine.backends.onnx_export import (
    TEXT_TOKENS,
    UNET_INPUTS,
    UNET_OUTPUT,
    StyleInputs,
    export_unet,
    unet_size_factor,
)
from engine.backends.unet import AddedCond, Residuals, added_input_widths
from engine.core.errors import DreamwireError

log = logging.getLogger(__name__)

LATENT_FACTOR = 8  # pixels per latent pixel, per side, for every Stable Diffusion VAE (KL and TAESD)


def import_tensorrt() -> ModuleType:
    try:
        import tensorrt
    except ImportError:
        major = (torch.version.cuda or "").split(".")[0]
        matched = (
            f" (this torch is built for CUDA {major}: 'dreamwire[tensorrt-cu{major}]')" if major in ("12", "13") else ""
        )
        raise DreamwireError(
            f"TensorRT: the tensorrt package is not installed (stream.acceleration tensorrt needs it): "
            f"pip install 'dreamwire[tensorrt]'{matched}"
        ) from None
    return tensorrt


Shapes = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]  # an input's (min, opt, max) in the profile


@dataclass
class EngineExtras:
    """I/O tensors a layer above adds to the UNet's engine (the feature bank, engine/pipeline/feature_bank.py): the
    graph to export, each extra input's profile shapes, and the tensors bound by address at every allocation (fixed
    for the backend's life: the engine reads and writes them in place, no copy)."""

    export: Callable[[Path, int, tuple[int, int]], Path]  # (onnx path, rows, opt latent size) → the graph written
    profile: Callable[[int, int, int], dict[str, Shapes]]  # (min, opt, max latent side) → extra inputs' shapes
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    spec_fields: dict[str, Any] = field(default_factory=dict)  # EngineSpec fields they set (the engine's key)


def build_unet_backend(
    unet: torch.nn.Module,
    spec: EngineSpec,
    *,
    cache_dir: Path | None = None,
    extras: EngineExtras | None = None,
    styles: StyleInputs | None = None,
) -> TensorRTUNet:
    """The UNet as a TensorRT engine: the cached one for spec's key, else exported, built and cached. extras: more
    inputs and outputs (spec's key must name them, e.g. its feature_bank_frames). styles: the LoRA weights and
    IP-Adapter inputs, bound once to the pipeline's buffers (engine/backends/onnx_export.py)."""
    styles = styles or StyleInputs()
    trt = import_tensorrt()
    path = engine_path(spec, cache_dir)
    key = spec.compute_hash()
    weight = next(unet.parameters())
    device = weight.device
    _require_cuda(device, path, key)
    if str(weight.dtype).removeprefix("torch.") != spec.dtype:
        raise DreamwireError(f"TensorRT engine {path} (key {key}): the UNet is {weight.dtype}, the spec {spec.dtype}")
    try:
        if path.is_file():
            log.info("loading TensorRT engine %s (key %s)", path, key)
            serialized = path.read_bytes()
        else:
            serialized = _build(trt, unet, spec, path, extras, styles)
            save_engine(spec, serialized, path.parent)
        factor, added = unet_size_factor(unet), added_input_widths(unet)
        return TensorRTUNet(trt, serialized, path, key, device, factor, added, extras, styles.buffers())
    except DreamwireError:
        raise
    except Exception as error:  # TensorRT, ONNX and file errors come in many types: all stop the run, named
        raise DreamwireError(f"TensorRT engine {path} (key {key}): {type(error).__name__}: {error}") from error


def _require_cuda(device: torch.device, path: Path, key: str) -> None:
    if device.type != "cuda":
        raise DreamwireError(
            f"TensorRT engine {path} (key {key}): TensorRT needs the model on a CUDA device, not {device} "
            f"(set model.device to cuda or auto on a machine with an NVIDIA GPU)"
        )


def _cuda_stream(device: torch.device) -> int:
    """The handle of torch's current CUDA stream: TensorRT's work queues behind torch's on it."""
    return torch.cuda.current_stream(device).cuda_stream


# ---- build -----------------------------------------------------------------------------------------


def _build(
    trt: ModuleType,
    unet: torch.nn.Module,
    spec: EngineSpec,
    path: Path,
    extras: EngineExtras | None,
    styles: StyleInputs,
) -> bytes:
    key = spec.compute_hash()
    log.info("building TensorRT engine for %s (key %s): this takes minutes, once per key", spec.model_id, key)
    started = time.monotonic()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".onnx-", dir=path.parent) as staging:
        side = spec.opt_size // LATENT_FACTOR
        graph = Path(staging) / "unet.onnx"
        if (extras is not None or styles.buffers()) and added_input_widths(unet):
            raise DreamwireError(  # those graphs have no text_embeds / time_ids inputs
                "the feature bank, LoRAs and the IP-Adapter under stream.acceleration tensorrt are not built for "
                "SDXL yet: use compile or none with an SDXL model"
            )
        if extras is not None and styles.buffers():
            raise DreamwireError(
                "the feature bank together with LoRAs or the IP-Adapter under stream.acceleration tensorrt is not "
                "built yet: use compile or none, or one of them"
            )
        if extras is not None:
            onnx_path = extras.export(graph, spec.unet_rows, (side, side))
        elif styles.buffers():
            onnx_path = styles.export(unet, graph, spec.unet_rows, (side, side))
        else:
            onnx_path = export_unet(unet, graph, spec.unet_rows, (side, side))
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise DreamwireError(f"TensorRT engine {path} (key {key}): the ONNX parser refused the UNet: {errors}")
        config = builder.create_builder_config()
        config.add_optimization_profile(_profile(builder, unet, spec, extras, styles))
        config.progress_monitor = _progress_monitor(trt)
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise DreamwireError(f"TensorRT engine {path} (key {key}): the build failed (see TensorRT's log above)")
    log.info("built TensorRT engine %s in %.0f s", path, time.monotonic() - started)
    return bytes(serialized)


def _profile(
    builder: Any,
    unet: torch.nn.Module,
    spec: EngineSpec,
    extras: EngineExtras | None = None,
    styles: StyleInputs | None = None,
) -> Any:
    """Batch 1..rows (tuned for rows), sides min..max pixels (tuned for opt), in latent units."""
    channels, dim, rows = int(unet.config.in_channels), int(unet.config.cross_attention_dim), spec.unet_rows
    low, opt, high = (size // LATENT_FACTOR for size in (spec.min_size, spec.opt_size, spec.max_size))
    profile = builder.create_optimization_profile()
    profile.set_shape("sample", (1, channels, low, low), (rows, channels, opt, opt), (rows, channels, high, high))
    profile.set_shape("timestep", (1,), (rows,), (rows,))
    profile.set_shape(
        "encoder_hidden_states", (1, TEXT_TOKENS, dim), (rows, TEXT_TOKENS, dim), (rows, TEXT_TOKENS, dim)
    )
    for name, width in added_input_widths(unet).items():  # SDXL: text_embeds [B, P], time_ids [B, 6]
        profile.set_shape(name, (1, width), (rows, width), (rows, width))
    for name, (small, tuned, large) in (extras.profile(low, opt, high) if extras is not None else {}).items():
        profile.set_shape(name, small, tuned, large)
    for name, (buffer, per_row) in (styles.buffers() if styles is not None else {}).items():
        row = tuple(buffer.shape[1:])  # the style inputs: fixed, or one row per UNet row
        low_opt_high = ((1, *row), (rows, *row), (rows, *row)) if per_row else (tuple(buffer.shape),) * 3
        profile.set_shape(name, *low_opt_high)
    return profile


def _progress_monitor(trt: ModuleType) -> Any:
    """A progress display for the build: each phase as it starts, and its steps at most once a second."""

    class BuildProgress(trt.IProgressMonitor):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.depth: dict[str, int] = {}
            self.shown = 0.0

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.depth[phase_name] = self.depth.get(parent_phase or "", -1) + 1
            log.info("TensorRT build: %s%s (%d steps)", "  " * self.depth[phase_name], phase_name, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            now = time.monotonic()
            if now - self.shown >= 1.0:
                self.shown = now
                log.info("TensorRT build: %s%s step %d", "  " * self.depth.get(phase_name, 0), phase_name, step + 1)
            return True  # keep building

        def phase_finish(self, phase_name: str) -> None:
            self.depth.pop(phase_name, None)

    return BuildProgress()


# ---- runtime ---------------------------------------------------------------------------------------

_TORCH_DTYPES = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT64": torch.int64,
    "BOOL": torch.bool,
}


class TensorRTUNet:
    """ε = unet(x, t, embeddings) on a TensorRT engine. x: [B, C, h, w], t: [B] int64, embeddings: [B, 77, D];
    for SDXL also added: text_embeds [B, P], time_ids [B, 6] (added_widths: their names and widths)."""

    def __init__(
        self,
        trt: ModuleType,
        serialized: bytes,
        path: Path,
        key: str,
        device: torch.device,
        size_factor: int,
        added_widths: dict[str, int] | None = None,
        extras: EngineExtras | None = None,
        styles: dict[str, tuple[torch.Tensor, bool]] | None = None,
    ) -> None:
        self.path, self.key, self.device, self.size_factor = path, key, device, size_factor
        self.added_widths = added_widths or {}
        self.extras = extras or EngineExtras(export=_no_export, profile=lambda *_: {})
        self.styles = styles or {}  # style input → (the pipeline's buffer, bound by rows): read at every call
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(serialized)
        if self.engine is None:
            raise self._error(
                "TensorRT could not load it (built by another TensorRT version or GPU?); "
                "delete it with `dreamwire engines clear`"
            )
        names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
        inputs = [*UNET_INPUTS, *self.added_widths, *self.extras.inputs, *self.styles]
        expected = [*inputs, UNET_OUTPUT, *self.extras.outputs]
        if names != set(expected):
            raise self._error(f"its I/O tensors are {sorted(names)}, expected {expected}")
        self.dtypes = {name: _TORCH_DTYPES[self.engine.get_tensor_dtype(name).name] for name in names}
        self.context = self.engine.create_execution_context()
        self._shape: tuple[torch.Size, torch.Size] | None = None
        self._inputs: dict[str, torch.Tensor] = {}
        self._output = torch.empty(0)

    def _error(self, what: str) -> DreamwireError:
        return DreamwireError(f"TensorRT engine {self.path} (key {self.key}): {what}")

    def __call__(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        embeddings: torch.Tensor,
        residuals: Residuals | None = None,  # none here: ControlNets are refused with tensorrt (check_stream)
        added: AddedCond | None = None,
    ) -> torch.Tensor:
        shape = (x.shape, embeddings.shape)
        if shape != self._shape:
            self._allocate(x.shape, embeddings.shape)
            self._shape = shape
        self._inputs["sample"].copy_(x)
        self._inputs["timestep"].copy_(t)
        self._inputs["encoder_hidden_states"].copy_(embeddings)
        for name in self.added_widths:  # SDXL's added conditioning (none for SD)
            self._inputs[name].copy_(added[name])  # type: ignore[index]
        if not self.context.execute_async_v3(_cuda_stream(self.device)):
            raise self._error(f"execute_async_v3 failed for sample {tuple(x.shape)}")
        return self._output  # reused by the next call: consume it first

    def _allocate(self, sample: torch.Size, embeddings: torch.Size) -> None:
        """Once per new shape: the input shapes, then fresh buffers at fixed addresses for every I/O tensor."""
        rows, _, height, width = sample
        if height % self.size_factor or width % self.size_factor:
            step = self.size_factor * LATENT_FACTOR
            raise self._error(f"size {width * LATENT_FACTOR}x{height * LATENT_FACTOR} is not a multiple of {step}")
        shapes = {"sample": tuple(sample), "timestep": (rows,), "encoder_hidden_states": tuple(embeddings)}
        shapes.update({name: (rows, width) for name, width in self.added_widths.items()})
        extra_shapes = {name: tuple(tensor.shape) for name, tensor in self.extras.inputs.items()}
        for name, dims in {**shapes, **extra_shapes}.items():
            if not self.context.set_input_shape(name, dims):
                raise self._error(
                    f"input {name} {dims} is outside its optimisation profile (size "
                    f"{width * LATENT_FACTOR}x{height * LATENT_FACTOR}, {rows} rows): rebuild with a wider "
                    f"stream.trt_min_size/trt_max_size"
                )
        self._inputs = {
            name: torch.empty(dims, dtype=self.dtypes[name], device=self.device) for name, dims in shapes.items()
        }
        self._output = torch.empty(tuple(sample), dtype=self.dtypes[UNET_OUTPUT], device=self.device)
        styles = []  # the style inputs: the pipeline's own buffers (a call of B rows reads the first B rows)
        for name, (buffer, per_row) in self.styles.items():
            dims = (rows, *buffer.shape[1:]) if per_row else tuple(buffer.shape)
            if not self.context.set_input_shape(name, dims):
                raise self._error(f"input {name} {dims} is outside its optimisation profile")
            styles.append((name, buffer))
        bound = (*self._inputs.items(), (UNET_OUTPUT, self._output), *self.extras.inputs.items(), *styles)
        for name, buffer in (*bound, *self.extras.outputs.items()):
            if not self.context.set_tensor_address(name, buffer.data_ptr()):
                raise self._error(f"set_tensor_address({name}) failed")
        log.debug("TensorRT UNet buffers for sample %s, embeddings %s", tuple(sample), tuple(embeddings))


def _no_export(path: Path, rows: int, latent_size: tuple[int, int]) -> Path:
    raise AssertionError("a loaded engine is never exported")
