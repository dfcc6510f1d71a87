"""ControlNet in the stream: structure (edges, depth, a second feed) steering every slot of Stream Batch.

Per step (StreamPipeline._model_step, step 2a): each active ControlNet's control image is made from the input frame
[f, 3, H, W] (the same frame, through the same fit, as the UNet's input; or the newest frame of its external
source) by its preprocessor, and repeated for every UNet row (all slots, and the CFG rows). Per UNet call
(ControlledUNet): each active ControlNet runs once on the UNet's rows (its backend: eager, or a TensorRT engine with
the scale as an input); its residuals are multiplied by a per-row scale [rows, 1, 1, 1], summed over the nets, and
passed to the UNet as down_block_additional_residuals / mid_block_additional_residual (a TensorRT UNet engine takes
them as named inputs: engine/backends/tensorrt_controlnet.py).

The per-row scale is scale·enabled on the rows of the slots that start/end select, 0 elsewhere: slot i of n acts
when start ≤ i/n and (i+1)/n ≤ end (as diffusers' control_guidance_start/end over a schedule of n steps). It lives
in a device buffer written in place, so a live change of scale, start or end needs no re-capture under
stream.cuda_graph. A net whose scale is 0, which is disabled, or which acts on no slot is skipped (no cost):
that changes what the step computes, so the step runner is invalidated (a CUDA graph captures again), as when
guidance crosses 1.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from engine.backends.unet import AddedCond, ControlNetBackend, Residuals, UNetBackend
from engine.config.schema import ControlNetConfig, StreamConfig
from engine.core.errors import DreamwireError
from engine.pipeline.cfg import CfgStrategy
from engine.pipeline.models import from_pretrained
from engine.pipeline.preprocess import Preprocessor, load_depth_model, make_preprocessor
from engine.pipeline.sdxl import base_name

log = logging.getLogger(__name__)

# A ControlNet built from the model's own UNet (ControlNetModel.from_unet: the architecture of a real one for that
# base) with random weights: tests, demos, and the bench's cost of a ControlNet without a download.
RANDOM_CONTROLNET_ID = "random"
_EPSILON = 1e-6


def check_stream(stream: StreamConfig, configs: Sequence[ControlNetConfig]) -> None:
    """What the stream settings cannot do with ControlNets, refused before anything is built."""
    if not configs:
        return
    if stream.cuda_graph and any(c.reuse_frames > 1 for c in configs):
        raise DreamwireError(
            "controlnets reuse_frames above 1 cannot run under stream.cuda_graph (a captured step computes the "
            "residuals every frame): set reuse_frames 1 or stream.cuda_graph false"
        )
    if stream.mode != "img2img" and any(c.preprocessor != "external" for c in configs):
        raise DreamwireError(
            f"stream.mode {stream.mode!r} has no input frame to make a control image from: use img2img, or "
            "preprocessor external (the control image from its own source)"
        )


def slot_acts(config: ControlNetConfig, slot: int, slots: int) -> bool:
    """Whether the net acts on slot `slot` of `slots` (slot 0 has the most noise)."""
    return config.start <= slot / slots + _EPSILON and (slot + 1) / slots <= config.end + _EPSILON


def randomize_zero_convs(net: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Random weights for the convolutions a ControlNet starts with at zero (its outputs and the conditioning
    embedding's last conv): otherwise a net built from a UNet adds nothing."""
    generator = torch.Generator().manual_seed(seed)
    convs = [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]
    with torch.no_grad():
        for conv in convs:
            for parameter in conv.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return net


def build_random_controlnet(unet: torch.nn.Module) -> torch.nn.Module:
    from diffusers import ControlNetModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return randomize_zero_convs(ControlNetModel.from_unet(unet), seed=1)


def check_base(net: torch.nn.Module, unet: torch.nn.Module, net_id: str, model_id: str) -> None:
    """A ControlNet made for another base (SD 1.5 vs SD 2.1, SDXL) is refused with one line naming both."""
    for key in ("in_channels", "cross_attention_dim", "block_out_channels"):
        ours, theirs = getattr(unet.config, key, None), getattr(net.config, key, None)
        if ours is not None and theirs is not None and _plain(ours) != _plain(theirs):
            raise DreamwireError(
                f"ControlNet {net_id!r} ({base_name(net.config)}) does not fit the model {model_id!r} "
                f"({base_name(unet.config)}): its {key} is {_plain(theirs)}, the "
                f"UNet's is {_plain(ours)} (a ControlNet for another base model; see README, ControlNet)"
            )


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, list | tuple) else value


def load_controlnet(
    net_id: str, unet: torch.nn.Module, model_id: str, device: torch.device, dtype: torch.dtype
) -> torch.nn.Module:
    """A ControlNetModel by hub id or local diffusers folder (or `tiny`), checked against the UNet's base."""
    if net_id == RANDOM_CONTROLNET_ID:
        net = build_random_controlnet(unet if unet.dtype == torch.float32 else copy.deepcopy(unet).float())
    else:
        from diffusers import ControlNetModel

        net = from_pretrained(ControlNetModel, net_id, "ControlNet", torch_dtype=dtype)
    check_base(net, unet, net_id, model_id)
    log.info("loaded ControlNet %s", net_id)
    if next(net.parameters()).dtype != dtype:  # diffusers warns on every .to(dtype), even a no-op one
        net = net.to(dtype)
    return net.to(device).eval().requires_grad_(False)


class ControlUnit:
    """One ControlNet of the stream: its backend (eager, or a TensorRT engine), preprocessor and buffers (allocated
    once, fixed addresses)."""

    def __init__(
        self, config: ControlNetConfig, run: ControlNetBackend, preprocess: Preprocessor, buffers: _Shapes
    ) -> None:
        self.config, self.run, self.preprocess = config, run, preprocess
        self.image = buffers.zeros(buffers.max_rows, 3, buffers.height, buffers.width)  # the control image, per row
        self.row_scale = buffers.zeros(buffers.calls, buffers.max_rows, 1, 1, 1)  # scale per UNet call and row
        self.acts = False  # some row has a scale above 0 (kept on the host: reading row_scale would sync)
        # external: the second source's newest frame [f, 3, H, W] in [−1, 1] (set_external), held when it stops
        # preprocess_on source: the control image made on the input's source thread arrives the same way
        external = config.preprocessor == "external" or config.preprocess_on == "source"
        self.external = buffers.zeros(buffers.frames if external else 0, 3, buffers.height, buffers.width)
        self.source: Callable[[torch.Tensor | None], torch.Tensor] = self._external if external else _the_input

        # reuse_frames: the residuals of each UNet call computed once every that many frames, kept in between
        self._kept: list[Residuals | None] = [None] * buffers.calls
        self._age = [0] * buffers.calls  # frames since each call's kept residuals were computed

    def _external(self, image: torch.Tensor | None) -> torch.Tensor:
        return self.external

    def residuals(
        self,
        call: int,
        x: torch.Tensor,
        t: torch.Tensor,
        embeddings: torch.Tensor,
        rows: int,
        added: AddedCond | None = None,
    ) -> Residuals:
        """This net's residuals for UNet call `call`, scaled per row: computed, or kept from an earlier frame.
        added: SDXL's added conditioning of the UNet call (None for SD)."""
        kept = self._kept[call]
        if kept is not None and self._age[call] + 1 < self.config.reuse_frames:
            self._age[call] += 1
            return kept
        self._age[call] = 0
        found = self.run(x, t, embeddings, self.image[:rows], self.row_scale[call, :rows], added)
        if self.config.reuse_frames > 1:
            self._kept[call] = found
        return found

    def forget(self) -> None:
        self._kept = [None] * len(self._kept)

    @property
    def active(self) -> bool:
        return self.acts


def _the_input(image: torch.Tensor | None) -> torch.Tensor:
    return image  # type: ignore[return-value]  # img2img only: checked when the pipeline is built


class _Shapes:
    def __init__(
        self, frames: int, calls: int, max_rows: int, height: int, width: int, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.frames, self.calls, self.max_rows, self.height, self.width = frames, calls, max_rows, height, width
        self.device, self.dtype = device, dtype

    def zeros(self, *shape: int) -> torch.Tensor:
        return torch.zeros(shape, device=self.device, dtype=self.dtype)


class ControlNets:
    """The stream's ControlNets (at most 4). slots: n; frames: f; sequential: one UNet call per slot (else one
    call for all n slots, Stream Batch); max_rows: the most UNet rows of one call (full CFG: twice the latent rows)."""

    def __init__(
        self,
        configs: Sequence[ControlNetConfig],
        nets: Sequence[ControlNetBackend],
        depth_models: dict[str, Any],
        *,
        slots: int,
        frames: int,
        sequential: bool,
        height: int,
        width: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.slots, self.frames, self.sequential = slots, frames, sequential
        calls = slots if sequential else 1
        latent_rows = frames if sequential else slots * frames
        self.shapes = _Shapes(frames, calls, 2 * latent_rows, height, width, device, dtype)
        self.units = [
            ControlUnit(
                config, net, make_preprocessor(config, device, dtype, depth_models.get(config.depth_model)), self.shapes
            )
            for config, net in zip(configs, nets, strict=True)
        ]
        self.rows = latent_rows  # UNet rows per call under the current CFG strategy (layout())
        self._slot_of_row: list[list[int]] = [[]] * calls  # per call: the slot of each UNet row
        self.active: list[ControlUnit] = []
        self._call = 0  # sequential mode: which slot's call comes next

    def layout(self, cfg: CfgStrategy) -> None:
        """The UNet rows of a CFG strategy (chosen at prepare, changed when guidance crosses 1): which slot each
        row belongs to, read off the strategy's own row layout."""
        f, n = self.frames, self.slots
        per_call = (
            [torch.full((f,), i) for i in range(n)] if self.sequential else [torch.arange(n).repeat_interleave(f)]
        )
        self._slot_of_row = [cfg.unet_batch(slots.view(-1, 1), slots)[1].tolist() for slots in per_call]
        self.rows = len(self._slot_of_row[0])
        for unit in self.units:
            self._write_scales(unit)
        self.active = [unit for unit in self.units if unit.active]
        for unit in self.units:
            unit.forget()  # other rows: nothing kept fits

    def set(self, index: int, config: ControlNetConfig) -> bool:
        """A live change of ControlNet `index` (scale, enabled, start, end, preprocessor parameters), in place.
        True when the set of nets that run changed (the step runner must be invalidated)."""
        unit = self.units[index]
        if (config.model, config.preprocessor, config.input, config.depth_model, config.preprocess_on) != (
            unit.config.model,
            unit.config.preprocessor,
            unit.config.input,
            unit.config.depth_model,
            unit.config.preprocess_on,
        ):
            raise DreamwireError(f"controlnets.{index}: a new model, preprocessor or input is a rebuild")
        unit.config = config
        unit.preprocess.set(config)
        self._write_scales(unit)
        active = [u for u in self.units if u.active]
        changed = [id(u) for u in active] != [id(u) for u in self.active]
        self.active = active
        unit.forget()  # a new scale or range: the kept residuals carry the old one
        return changed

    def _write_scales(self, unit: ControlUnit) -> None:
        config = unit.config
        weight = config.scale if config.enabled else 0.0
        scales = torch.zeros(unit.row_scale.shape[:2])
        for call, slots in enumerate(self._slot_of_row):
            scales[call, : len(slots)] = torch.tensor([weight * slot_acts(config, s, self.slots) for s in slots])
        unit.row_scale.copy_(scales.view(unit.row_scale.shape))
        unit.acts = bool(scales.any())

    def set_external(self, index: int, image: torch.Tensor) -> None:
        """The external source's newest frame for ControlNet `index` [f, 3, H, W] in [−1, 1] (between steps); with
        preprocess_on source, the control image made on the source thread."""
        self.units[index].external.copy_(image)

    def prepare(self, image: torch.Tensor | None) -> None:
        """Step 2a: each active net's control image, repeated for every UNet row (rows = m·f, row r shows frame
        r mod f)."""
        f, rows = self.frames, self.rows
        for unit in self.active:
            control = unit.preprocess(unit.source(image))  # [f, 3, H, W] in [0, 1]
            unit.image[:rows].view(rows // f, f, *control.shape[1:]).copy_(control.unsqueeze(0))

    def residuals(
        self, x: torch.Tensor, t: torch.Tensor, embeddings: torch.Tensor, added: AddedCond | None = None
    ) -> Residuals | None:
        """Per UNet call: the active nets' residuals, scaled per row and summed; None when none is active."""
        call = self._call
        self._call = (call + 1) % self.shapes.calls
        rows = x.shape[0]
        down: list[torch.Tensor] | None = None
        mid: torch.Tensor | None = None
        for unit in self.active:
            blocks, middle = unit.residuals(call, x, t, embeddings, rows, added)
            if down is None or mid is None:
                down, mid = blocks, middle
            else:
                down = [total + block for total, block in zip(down, blocks, strict=True)]
                mid = mid + middle
        return None if down is None or mid is None else (down, mid)


class ControlledUNet:
    """A UNet backend with the ControlNets' residuals added (engine/backends/unet.py's protocol)."""

    def __init__(self, inner: UNetBackend, controlnets: ControlNets) -> None:
        self.inner, self.controlnets = inner, controlnets

    def __call__(
        self, x: torch.Tensor, t: torch.Tensor, embeddings: torch.Tensor, **unet_kwargs: AddedCond
    ) -> torch.Tensor:
        """unet_kwargs: the pipeline's own (SDXL: added, the added conditioning), for the nets and the UNet alike."""
        residuals = self.controlnets.residuals(x, t, embeddings, unet_kwargs.get("added"))
        return self.inner(x, t, embeddings, residuals, **unet_kwargs)


def load_controlnets(
    configs: Sequence[ControlNetConfig],
    unet: torch.nn.Module,
    model_id: str,
    cache: dict[tuple[str, str], Any],
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[list[torch.nn.Module], dict[str, Any]]:
    """The nets and depth models for `configs`, loaded once per models (`cache`: kept on the Models, so a rebuild
    on the same models reuses them)."""
    nets = []
    for config in configs:
        key = ("controlnet", config.model)
        if key not in cache:
            cache[key] = load_controlnet(config.model, unet, model_id, device, dtype)
        nets.append(cache[key])
    depth: dict[str, Any] = {}
    for config in configs:
        if config.preprocessor == "depth":
            key = ("depth", config.depth_model)
            if key not in cache:
                cache[key] = load_depth_model(config.depth_model, device, dtype)
            depth[config.depth_model] = cache[key]
    return nets, depth
