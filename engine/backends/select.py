"""Backend selection: stream.acceleration picks the UNet and VAE backends once, per pipeline; stream.cuda_graph
picks how a step runs. The stream code calls what is chosen and never branches on the backend.

  none      eager PyTorch (eager.py): fp16/bf16 on CUDA, channels_last, SDPA attention
  compile   torch.compile, one graph per shape (compiled.py)
  tensorrt  a TensorRT engine for the UNet, built or loaded from the engine cache (tensorrt.py, engine_cache.py:
            `pip install 'dreamwire[tensorrt]'`); the VAE runs eager

A requested backend that fails stops the run with a DreamwireError naming what failed, unless the preset says
`stream.acceleration_fallback: none` (then eager, with a warning): see fallback.py.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from engine.backends.compiled import CompiledUNet, CompiledVae
from engine.backends.cuda_graph import Body, CudaGraphStep, EagerStep, StepRunner
from engine.backends.eager import CpuFallbackLog, MpsVae, prepare_modules
from engine.backends.fallback import Fallback
from engine.backends.onnx_export import StyleInputs
from engine.backends.unet import ControlNetBackend, EagerControlNet, EagerUNet, UNetBackend
from engine.backends.vae import VaeBackend
from engine.config.schema import ModelConfig, StreamConfig
from engine.core.errors import DreamwireError

log = logging.getLogger(__name__)
ACCELERATIONS = ("none", "compile", "tensorrt")
TENSORRT_EXTRA = "pip install 'dreamwire[tensorrt]'"


@dataclass(frozen=True)
class Backends:
    unet: UNetBackend
    vae: VaeBackend
    name: str  # the acceleration that actually runs ("none" after an allowed fallback)
    controlnets: tuple[ControlNetBackend, ...] = ()  # one per ControlNet of select_backends(controlnets=...)


def select_backends(
    stream: StreamConfig,
    model: ModelConfig | None,
    unet: torch.nn.Module,
    vae_module: torch.nn.Module,
    vae: VaeBackend,
    unet_rows: int,
    device: torch.device,
    dtype: torch.dtype,
    extras: Any = None,
    styles: StyleInputs | None = None,
    style_key: tuple[tuple[str, float | None], ...] = (),
    controlnets: Sequence[tuple[str, torch.nn.Module]] = (),
) -> Backends:
    """unet_rows: UNet rows per call with guidance on (n·f, (n+1)·f or 2·n·f, by cfg_type): the TensorRT
    engine's batch. vae: the eager codec of vae_module. extras: the TensorRT engine's added I/O (tensorrt.py's
    EngineExtras: the feature bank), or None. styles, style_key: the LoRA and IP-Adapter inputs of a TensorRT engine
    and what its cache key says of them (engine/pipeline/stream.py). controlnets: (model id, net) of the stream's
    ControlNets (engine/pipeline/controlnet.py): under tensorrt the UNet engine takes their residuals and each gets
    an engine."""
    name = stream.acceleration
    if name not in ACCELERATIONS:
        raise DreamwireError(f"stream.acceleration {name!r} is unknown (allowed: {', '.join(ACCELERATIONS)})")
    fallback = Fallback(stream.acceleration_fallback == "none")
    prepare_modules(unet, vae_module, device)
    eager = _eager(unet, vae, device, controlnets)
    if name == "none":
        return eager
    try:
        if name == "compile":
            compiled = CompiledUNet(unet, fallback), CompiledVae(vae, fallback)
            return Backends(*compiled, "compile", eager.controlnets)
        return _tensorrt(
            unet, model, stream, unet_rows, device, dtype, eager.vae, controlnets, extras, styles, style_key
        )
    except Exception as error:  # a TensorRT build fails in many ways; the rule is the same for all of them
        fallback.failed(f"stream.acceleration {name!r}", error)
        return eager


def _eager(
    unet: torch.nn.Module, vae: VaeBackend, device: torch.device, controlnets: Sequence[tuple[str, torch.nn.Module]]
) -> Backends:
    nets = tuple(EagerControlNet(net) for _, net in controlnets)
    if device.type == "mps":
        return Backends(CpuFallbackLog(EagerUNet(unet)), MpsVae(vae), "none", nets)
    return Backends(EagerUNet(unet), vae, "none", nets)


def _tensorrt(
    unet: torch.nn.Module,
    model: ModelConfig | None,
    stream: StreamConfig,
    unet_rows: int,
    device: torch.device,
    dtype: torch.dtype,
    vae: VaeBackend,
    controlnets: Sequence[tuple[str, torch.nn.Module]],
    extras: Any = None,
    styles: StyleInputs | None = None,
    style_key: tuple[tuple[str, float | None], ...] = (),
) -> Backends:
    """The UNet engine (with the ControlNets' residual inputs when there are any, the feature bank's extras, the
    style inputs) and one engine per ControlNet, all with the same resolution profile; the VAE runs eager."""
    try:  # lazily: tensorrt is an optional extra, and its import is slow
        from engine.backends.engine_cache import controlnet_spec, engine_spec
        from engine.backends.onnx_export import residual_names
        from engine.backends.tensorrt import build_unet_backend, check_engine_inputs, import_tensorrt
        from engine.backends.tensorrt_controlnet import build_controlled_unet_backend, build_controlnet_backend
    except ImportError as error:
        raise DreamwireError(
            f"the TensorRT backend is not installed ({error}): {TENSORRT_EXTRA}, matched to torch's CUDA version"
        ) from error
    import_tensorrt()  # the package first: without it no other fix helps (a one-line error naming the extra)
    if model is None:
        raise DreamwireError("the TensorRT engine key needs the model's config: load the models with load_models")
    spec = engine_spec(model, stream, unet_rows, dtype, device, loras=style_key)
    if extras is not None:  # what the added I/O changes in the engine is in its key
        spec = dataclasses.replace(spec, **extras.spec_fields)
    if not controlnets:
        return Backends(build_unet_backend(unet, spec, extras=extras, styles=styles), vae, "tensorrt")
    check_engine_inputs(unet, extras, styles, controlnets=True)  # the controlled UNet graph: residuals only
    first = controlnets[0][1]  # every net fits the base (checked at load): one residual layout
    spec = dataclasses.replace(spec, residual_inputs=len(residual_names(first)))
    nets = tuple(build_controlnet_backend(net, unet, controlnet_spec(spec, net_id)) for net_id, net in controlnets)
    return Backends(build_controlled_unet_backend(unet, first, spec), vae, "tensorrt", nets)


def make_step_runner(
    stream: StreamConfig,
    body: Body,
    preserve: Callable[[], AbstractContextManager[Any]],
    device: torch.device,
) -> StepRunner:
    """How a step's model part runs: one CUDA graph replay (stream.cuda_graph), or call by call."""
    if not stream.cuda_graph:
        return EagerStep(body, preserve, warm=stream.acceleration == "compile")
    if device.type != "cuda":
        raise DreamwireError(
            f"stream.cuda_graph needs a CUDA device (model.device is {device.type}); set stream.cuda_graph=false"
        )
    return CudaGraphStep(body, preserve, device, Fallback(stream.acceleration_fallback == "none"))
