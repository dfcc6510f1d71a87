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
from collections.abc import Callable, Sequence
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

_WHAT = {"unet": "UNet", "controlnet": "ControlNet"}  # EngineSpec.kind, in messages
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
    """The UNet as a TensorRT engine: the cached one for spec's key, else exported, built and cached (with
    ControlNets: tensorrt_controlnet.build_controlled_unet_backend). Its inputs beyond sample, timestep and text:
    SDXL's added conditioning (from the UNet's config); extras, the feature bank's I/O (spec's key must name them,
    e.g. its feature_bank_frames); styles, the LoRA weights and IP-Adapter inputs, bound once to the pipeline's
    buffers (engine/backends/onnx_export.py). One graph takes one of these kinds at a time."""
    trt = import_tensorrt()
    styles = styles or StyleInputs()
    added = added_input_widths(unet)
    check_engine_inputs(unet, extras, styles)
    side = spec.opt_size // LATENT_FACTOR
    export: Export | None = None
    if extras is not None:
        export = lambda staging: extras.export(staging / "unet.onnx", spec.unet_rows, (side, side))  # noqa: E731
    elif styles.buffers():
        export = lambda staging: styles.export(unet, staging / "unet.onnx", spec.unet_rows, (side, side))  # noqa: E731

    def profile(builder: Any) -> Any:
        return _profile(builder, unet, spec, extras, styles)

    serialized, path, key, device = load_or_build(trt, unet, spec, cache_dir, export, profile)
    return wrap_engine(
        TensorRTUNet,
        trt,
        serialized,
        path,
        key,
        device,
        unet_size_factor(unet),
        (),
        added,
        extras,
        styles.buffers(),
    )


def check_engine_inputs(
    unet: torch.nn.Module, extras: EngineExtras | None, styles: StyleInputs | None, controlnets: bool = False
) -> None:
    """One engine graph takes one kind of input beyond sample, timestep and text for now: SDXL's added
    conditioning, the feature bank's I/O, the LoRA/IP-Adapter inputs or the ControlNets' residuals."""
    kinds = [
        kind
        for kind, present in (
            ("SDXL's added conditioning", bool(added_input_widths(unet))),
            ("the feature bank", extras is not None),
            ("LoRAs or the IP-Adapter", styles is not None and bool(styles.buffers())),
            ("ControlNets", controlnets),
        )
        if present
    ]
    if len(kinds) > 1:
        raise DreamwireError(
            f"under stream.acceleration tensorrt one engine takes one of these at a time for now, not "
            f"{' and '.join(kinds)}: use compile or none for this combination"
        )


def wrap_engine(kind: type[TensorRTUNet], trt: ModuleType, serialized: bytes, path: Path, key: str, *args: Any) -> Any:
    """The runtime `kind` on a serialized engine; its failures name the engine file and key."""
    try:
        return kind(trt, serialized, path, key, *args)
    except DreamwireError:
        raise
    except Exception as error:  # TensorRT errors come in many types: all stop the run, named
        raise DreamwireError(f"TensorRT engine {path} (key {key}): {type(error).__name__}: {error}") from error


# export(staging folder) → the ONNX file; profile(builder) → the optimisation profile. None: the plain UNet's.
Export = Callable[[Path], Path]
ProfileMaker = Callable[[Any], Any]


def load_or_build(
    trt: ModuleType,
    module: torch.nn.Module,
    spec: EngineSpec,
    cache_dir: Path | None,
    export: Export | None = None,
    profile: ProfileMaker | None = None,
) -> tuple[bytes, Path, str, torch.device]:
    """The serialized engine for spec's key (read from the cache, else built and cached), its path, key and device."""
    path = engine_path(spec, cache_dir)
    key = spec.compute_hash()
    weight = next(module.parameters())
    device = weight.device
    _require_cuda(device, path, key)
    if str(weight.dtype).removeprefix("torch.") != spec.dtype:
        raise DreamwireError(
            f"TensorRT engine {path} (key {key}): the {_WHAT[spec.kind]} is {weight.dtype}, the spec {spec.dtype}"
        )
    try:
        if path.is_file():
            log.info("loading TensorRT engine %s (key %s)", path, key)
            return path.read_bytes(), path, key, device
        serialized = _build(trt, module, spec, path, export, profile)
        save_engine(spec, serialized, path.parent)
        return serialized, path, key, device
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
    export: Export | None = None,
    profile: ProfileMaker | None = None,
) -> bytes:
    key = spec.compute_hash()
    log.info("building TensorRT engine for %s (key %s): this takes minutes, once per key", spec.model_id, key)
    started = time.monotonic()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".onnx-", dir=path.parent) as staging:
        side = spec.opt_size // LATENT_FACTOR
        if export is None:
            onnx_path = export_unet(unet, Path(staging) / "unet.onnx", spec.unet_rows, (side, side))
        else:
            onnx_path = export(Path(staging))
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise DreamwireError(
                f"TensorRT engine {path} (key {key}): the ONNX parser refused the {_WHAT[spec.kind]}: {errors}"
            )
        config = builder.create_builder_config()
        config.add_optimization_profile(_profile(builder, unet, spec) if profile is None else profile(builder))
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
    """Batch 1..rows (tuned for rows), sides min..max pixels (tuned for opt), in latent units; then the UNet's added
    inputs (SDXL), the extras' and the styles'."""
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
    """ε = unet(x, t, embeddings[, residuals][, added=]) on a TensorRT engine. x: [B, C, h, w], t: [B] int64,
    embeddings: [B, 77, D]; residuals (an engine with ControlNet residual inputs): copied into their input buffers,
    zeros when None; for SDXL also added: text_embeds [B, P], time_ids [B, 6] (added_widths: their names and
    widths). The feature bank's extras and the style inputs are bound by address: the engine reads them itself."""

    def __init__(
        self,
        trt: ModuleType,
        serialized: bytes,
        path: Path,
        key: str,
        device: torch.device,
        size_factor: int,
        residuals: Sequence[tuple[str, int, int]] = (),
        added_widths: dict[str, int] | None = None,
        extras: EngineExtras | None = None,
        styles: dict[str, tuple[torch.Tensor, bool]] | None = None,
    ) -> None:
        """residuals: the ControlNet residual inputs (name, channels, factor: [B, channels, h/factor, w/factor])."""
        self.path, self.key, self.device, self.size_factor = path, key, device, size_factor
        self.residual_layout = list(residuals)
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
        expected = self._io_names()
        if names != set(expected):
            raise self._error(f"its I/O tensors are {sorted(names)}, expected {expected}")
        self.dtypes = {name: _TORCH_DTYPES[self.engine.get_tensor_dtype(name).name] for name in names}
        self.context = self.engine.create_execution_context()
        self._shape: tuple[torch.Size, torch.Size] | None = None
        self._inputs: dict[str, torch.Tensor] = {}
        self._output = torch.empty(0)
        self._residuals: list[torch.Tensor] = []  # the residual inputs' buffers, in residual_layout's order
        self._residuals_zero = True  # they hold zeros (no ControlNet acts): nothing to write until one does

    def _io_names(self) -> list[str]:
        residuals = (name for name, _, _ in self.residual_layout)
        inputs = [*UNET_INPUTS, *residuals, *self.added_widths, *self.extras.inputs, *self.styles]
        return [*inputs, UNET_OUTPUT, *self.extras.outputs]

    def _error(self, what: str) -> DreamwireError:
        return DreamwireError(f"TensorRT engine {self.path} (key {self.key}): {what}")

    def __call__(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        embeddings: torch.Tensor,
        residuals: Residuals | None = None,
        added: AddedCond | None = None,
    ) -> torch.Tensor:
        shape = (x.shape, embeddings.shape)
        if shape != self._shape:
            self._allocate(x.shape, embeddings.shape)
            self._shape = shape
        self._inputs["sample"].copy_(x)
        self._inputs["timestep"].copy_(t)
        self._inputs["encoder_hidden_states"].copy_(embeddings)
        if residuals is not None:
            for buffer, residual in zip(self._residuals, (*residuals[0], residuals[1]), strict=True):
                buffer.copy_(residual)
            self._residuals_zero = False
        elif not self._residuals_zero:
            for buffer in self._residuals:
                buffer.zero_()
            self._residuals_zero = True
        for name in self.added_widths:  # SDXL's added conditioning (none for SD)
            self._inputs[name].copy_(added[name])  # type: ignore[index]
        if not self.context.execute_async_v3(_cuda_stream(self.device)):
            raise self._error(f"execute_async_v3 failed for sample {tuple(x.shape)}")
        return self._output  # reused by the next call: consume it first

    def _allocate(self, sample: torch.Size, embeddings: torch.Size) -> None:
        """Once per new shape: the input shapes, then fresh buffers at fixed addresses for every I/O tensor."""
        rows, _, height, width = sample
        shapes = {"sample": tuple(sample), "timestep": (rows,), "encoder_hidden_states": tuple(embeddings)}
        for name, channels, factor in self.residual_layout:
            shapes[name] = (rows, channels, height // factor, width // factor)
        shapes.update({name: (rows, width) for name, width in self.added_widths.items()})
        # The extras' and the style inputs' buffers are the pipeline's own (a call of B rows reads the first B rows
        # of a per-row style input): bound, never allocated here.
        extra_shapes = {name: tuple(tensor.shape) for name, tensor in self.extras.inputs.items()}
        style_shapes = {
            name: (rows, *buffer.shape[1:]) if per_row else tuple(buffer.shape)
            for name, (buffer, per_row) in self.styles.items()
        }
        self._set_input_shapes({**shapes, **extra_shapes, **style_shapes}, rows, height, width)
        self._inputs = {
            name: torch.zeros(dims, dtype=self.dtypes[name], device=self.device) for name, dims in shapes.items()
        }
        self._residuals = [self._inputs[name] for name, _, _ in self.residual_layout]
        self._residuals_zero = True
        self._output = torch.empty(tuple(sample), dtype=self.dtypes[UNET_OUTPUT], device=self.device)
        styles = [(name, buffer) for name, (buffer, _) in self.styles.items()]
        outputs = [(UNET_OUTPUT, self._output), *self.extras.outputs.items()]
        self._bind([*self._inputs.items(), *self.extras.inputs.items(), *styles, *outputs])
        log.debug("TensorRT UNet buffers for sample %s, embeddings %s", tuple(sample), tuple(embeddings))

    def _set_input_shapes(self, shapes: dict[str, tuple[int, ...]], rows: int, height: int, width: int) -> None:
        """One call's input shapes (height, width: the latent's), each checked against the optimisation profile."""
        pixels = f"{width * LATENT_FACTOR}x{height * LATENT_FACTOR}"
        if height % self.size_factor or width % self.size_factor:
            raise self._error(f"size {pixels} is not a multiple of {self.size_factor * LATENT_FACTOR}")
        for name, dims in shapes.items():
            if not self.context.set_input_shape(name, dims):
                raise self._error(
                    f"input {name} {dims} is outside its optimisation profile (size {pixels}, {rows} rows): "
                    f"rebuild with a wider stream.trt_min_size/trt_max_size"
                )

    def _bind(self, named: Sequence[tuple[str, torch.Tensor]]) -> None:
        """Every I/O tensor's buffer address: the engine reads and writes them there until the next allocation."""
        for name, buffer in named:
            if not self.context.set_tensor_address(name, buffer.data_ptr()):
                raise self._error(f"set_tensor_address({name}) failed")


def _no_export(path: Path, rows: int, latent_size: tuple[int, int]) -> Path:
    raise AssertionError("a loaded engine is never exported")
