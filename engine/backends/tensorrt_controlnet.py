"""TensorRT with ControlNets (TensorRT 10 or later; untested on GPU hardware here, see the README).

Two kinds of engine, both built from ONNX graphs of engine/backends/onnx_export.py and cached by key
(engine_cache.py: EngineSpec.kind, residual_inputs, controlnet_id):

  the controlled UNet   the UNet engine with the ControlNets' summed residuals as named inputs (down_0 … down_k,
                        mid; zeros when no net acts), one engine whatever the nets;
  one per ControlNet    sample, timestep, encoder_hidden_states, controlnet_cond [B, 3, H, W] in [0, 1] and
                        conditioning_scale [B] → the residuals, already scaled per row: a live scale change is an
                        input, never a rebuild.

Both engines get the same optimisation profile: batch 1..rows and the stream's trt_min_size..trt_max_size (the
ControlNet's conditioning image at 8× the latent side), so every size the UNet engine takes the ControlNet's takes
too. The residuals' shapes are read off one run of the net at a small size: (name, channels, factor), the
residual being [B, channels, h/factor, w/factor] for latents [B, C, h, w].
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from engine.backends import tensorrt as backend
from engine.backends.engine_cache import EngineSpec
from engine.backends.onnx_export import (
    UNET_INPUTS,
    export_controlled_unet,
    export_controlnet,
    residual_names,
    unet_size_factor,
)
from engine.backends.unet import AddedCond, Residuals

log = logging.getLogger(__name__)

CONTROL_INPUTS = ("controlnet_cond", "conditioning_scale")
ResidualLayout = list[tuple[str, int, int]]  # (name, channels, factor), in the UNet's order: down_0 …, mid


@torch.no_grad()
def residual_layout(net: torch.nn.Module, unet: torch.nn.Module) -> ResidualLayout:
    """The residuals' channels and spatial factors, from one run of the net on one row at a small latent."""
    weight = next(net.parameters())
    side = 2 * unet_size_factor(unet)  # the innermost residual 2x2 (a GroupNorm of one value per channel fails)
    dim = int(net.config.cross_attention_dim)
    down, mid = net(
        torch.zeros(1, int(net.config.in_channels), side, side, dtype=weight.dtype, device=weight.device),
        torch.zeros(1, dtype=torch.int64, device=weight.device),
        encoder_hidden_states=torch.zeros(1, backend.TEXT_TOKENS, dim, dtype=weight.dtype, device=weight.device),
        controlnet_cond=torch.zeros(1, 3, 8 * side, 8 * side, dtype=weight.dtype, device=weight.device),
        return_dict=False,
    )
    return [
        (name, int(residual.shape[1]), side // int(residual.shape[2]))
        for name, residual in zip(residual_names(net), (*down, mid), strict=True)
    ]


def _residual_shapes(profile: Any, layout: ResidualLayout, spec: EngineSpec) -> None:
    rows = spec.unet_rows
    low, opt, high = (size // backend.LATENT_FACTOR for size in (spec.min_size, spec.opt_size, spec.max_size))
    for name, channels, factor in layout:
        profile.set_shape(
            name,
            (1, channels, low // factor, low // factor),
            (rows, channels, opt // factor, opt // factor),
            (rows, channels, high // factor, high // factor),
        )


def build_controlled_unet_backend(
    unet: torch.nn.Module, net: torch.nn.Module, spec: EngineSpec, *, cache_dir: Path | None = None
) -> backend.TensorRTUNet:
    """The UNet engine with the residuals of `net` (any of the stream's ControlNets: they share the base's layout)
    as named inputs; spec.residual_inputs counts them."""
    trt = backend.import_tensorrt()
    layout = residual_layout(net, unet)
    side = spec.opt_size // backend.LATENT_FACTOR

    def export(folder: Path) -> Path:
        return export_controlled_unet(unet, net, folder / "unet.onnx", spec.unet_rows, (side, side))

    def profile(builder: Any) -> Any:
        made = backend._profile(builder, unet, spec)
        _residual_shapes(made, layout, spec)
        return made

    serialized, path, key, device = backend.load_or_build(trt, unet, spec, cache_dir, export, profile)
    return backend.wrap_engine(backend.TensorRTUNet, trt, serialized, path, key, device, unet_size_factor(unet), layout)


def build_controlnet_backend(
    net: torch.nn.Module, unet: torch.nn.Module, spec: EngineSpec, *, cache_dir: Path | None = None
) -> TensorRTControlNet:
    """ControlNet `spec.controlnet_id` as a TensorRT engine (engine_cache.controlnet_spec): cached, else built."""
    trt = backend.import_tensorrt()
    layout = residual_layout(net, unet)
    side = spec.opt_size // backend.LATENT_FACTOR

    def export(folder: Path) -> Path:
        return export_controlnet(net, folder / "controlnet.onnx", spec.unet_rows, (side, side))[0]

    def profile(builder: Any) -> Any:
        made = backend._profile(builder, net, spec)  # sample, timestep, text: the UNet engine's profile
        low, opt, high, rows = spec.min_size, spec.opt_size, spec.max_size, spec.unet_rows
        made.set_shape("controlnet_cond", (1, 3, low, low), (rows, 3, opt, opt), (rows, 3, high, high))
        made.set_shape("conditioning_scale", (1,), (rows,), (rows,))
        return made

    serialized, path, key, device = backend.load_or_build(trt, net, spec, cache_dir, export, profile)
    return backend.wrap_engine(TensorRTControlNet, trt, serialized, path, key, device, unet_size_factor(unet), layout)


class TensorRTControlNet(backend.TensorRTUNet):
    """One ControlNet's residuals on a TensorRT engine (engine/backends/unet.py's ControlNetBackend). The returned
    residuals are the engine's output buffers, reused by the next call: the UNet call consumes them first."""

    def __init__(
        self,
        trt: ModuleType,
        serialized: bytes,
        path: Path,
        key: str,
        device: torch.device,
        size_factor: int,
        residuals: Sequence[tuple[str, int, int]] = (),
    ) -> None:
        super().__init__(trt, serialized, path, key, device, size_factor, residuals)
        self._outputs: list[torch.Tensor] = []

    def _io_names(self) -> list[str]:
        return [*UNET_INPUTS, *CONTROL_INPUTS, *(name for name, _, _ in self.residual_layout)]

    def __call__(  # type: ignore[override]  # the ControlNetBackend protocol, not the UNet's
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        embeddings: torch.Tensor,
        image: torch.Tensor,
        scale: torch.Tensor,
        added: AddedCond | None = None,  # always None: SDXL's ControlNet engines are refused when built
    ) -> Residuals:
        shape = (x.shape, embeddings.shape)
        if shape != self._shape:
            self._allocate_control(x.shape, embeddings.shape)
            self._shape = shape
        inputs = self._inputs
        inputs["sample"].copy_(x)
        inputs["timestep"].copy_(t)
        inputs["encoder_hidden_states"].copy_(embeddings)
        inputs["controlnet_cond"].copy_(image)
        inputs["conditioning_scale"].copy_(scale.view(-1))
        if not self.context.execute_async_v3(backend._cuda_stream(self.device)):
            raise self._error(f"execute_async_v3 failed for sample {tuple(x.shape)}")
        return self._outputs[:-1], self._outputs[-1]

    def _allocate_control(self, sample: torch.Size, embeddings: torch.Size) -> None:
        """Once per new shape: the input shapes, then buffers at fixed addresses for every I/O tensor."""
        rows, _, height, width = sample
        pixels = (height * backend.LATENT_FACTOR, width * backend.LATENT_FACTOR)
        shapes = {
            "sample": tuple(sample),
            "timestep": (rows,),
            "encoder_hidden_states": tuple(embeddings),
            "controlnet_cond": (rows, 3, *pixels),
            "conditioning_scale": (rows,),
        }
        self._set_input_shapes(shapes, rows, height, width)
        self._inputs = {
            name: torch.zeros(dims, dtype=self.dtypes[name], device=self.device) for name, dims in shapes.items()
        }
        self._outputs = [
            torch.empty(rows, channels, height // factor, width // factor, dtype=self.dtypes[name], device=self.device)
            for name, channels, factor in self.residual_layout
        ]
        outputs = [(name, out) for (name, _, _), out in zip(self.residual_layout, self._outputs, strict=True)]
        self._bind([*self._inputs.items(), *outputs])
        log.debug("TensorRT ControlNet buffers for sample %s", tuple(sample))
