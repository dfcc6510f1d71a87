"""The feature bank (cached attention, after StreamV2V): the UNet's self-attention also attends to the keys and
values of earlier frames, and its deep layers may fuse each output feature with its nearest earlier one.

Per self-attention layer (attn1) and Stream Batch slot, with T tokens of width D and F = max_frames:

    out = softmax(Q·[K_now ; K_bank]ᵀ/√d)·[V_now ; V_bank]       K_bank, V_bank: [F·T, D] of that slot's past
    fused = out + fusion_strength·[cos(out, O_nn) ≥ fusion_threshold]·(O_nn − out)   (deep layers only)

where O_nn is the bank output (the layer's unfused output of an earlier frame) most similar to `out` by cosine.
An empty ring slot is masked out of both, so a fresh bank computes exactly the plain attention.

Rows: the bank keeps r = n·f rows, one per latent row of Stream Batch (slot i's frames), so row j always attends to
row j's own past: a frame at step i is matched with earlier frames at the same step i. Under CFG the UNet call has
B ≥ r rows, the conditional ones last ([uncond ; cond] under full, [uncond×f ; cond] under initialize: see
engine/pipeline/cfg.py). The uncond rows read the past of their conditional twin (the same slot) and are never
stored: the bank's layout does not depend on guidance (no reset when it crosses 1), it takes half the memory under
full, and ε_c − ε_u compares the two prompts under the same temporal context.

Fixed buffers (a CUDA graph replays them; engine/backends/cuda_graph.py): every ring is [r, F, T, D], allocated
when the bank is configured and written in place. The ring's next slot (head), its fill count, the frame count and
the live numbers (interval, fusion strength and threshold) are device tensors: an update every `interval` frames
is a masked write (torch.where), never a Python branch. enabled and max_frames change the buffers' shapes: the step
is captured again (or recompiled), the model is not reloaded.

The processors are installed once on the (shared) UNet's attn1 layers and compute the plain attention while no bank
is bound: a pipeline binds its bank only around its own UNet call (BankedUNet), so other pipelines built from the
same models are unaffected. A UNet runs one call at a time (the engine thread; a rebuild warms up while the engine
holds its frame).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from engine.backends.onnx_export import TEXT_TOKENS, UNET_INPUTS, UNET_OUTPUT, export_module
from engine.config.feature_bank import FeatureBankConfig

log = logging.getLogger(__name__)

# Fusion runs where StreamV2V runs it: the deepest self-attention layers (few tokens, most semantic features).
FUSION_BLOCKS = ("mid_block", "up_blocks.0", "up_blocks.1")
ATTN1 = ".attn1.processor"


class LayerView(Protocol):
    """What a bank processor reads and writes for one layer: a runtime ring (BankLayer) or an exported graph's
    inputs and outputs (ExportLayer)."""

    rows: int  # r: the bank's rows (the conditional UNet rows)
    valid: torch.Tensor  # [F] bool: ring slots holding a frame
    strength: torch.Tensor  # 0-dim: fusion strength
    threshold: torch.Tensor  # 0-dim: fusion threshold

    def past(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Keys [r, F·T, D], values [r, F·T, D], outputs [r, F·T, C] (None: no fusion in this layer)."""
        ...

    def keep(self, keys: torch.Tensor, values: torch.Tensor, outputs: torch.Tensor) -> None:
        """This frame's conditional rows: keys, values [r, T, D], unfused outputs [r, T, C]."""
        ...

    def twins(self, past: torch.Tensor, batch: int) -> torch.Tensor:
        """The bank rows [r, …] for a UNet call of `batch` rows: the leading uncond rows read their cond twin's."""
        ...


class BankAttnProcessor:
    """attn1's processor: the processor it replaced while no bank is bound, the banked attention while one is."""

    def __init__(self, name: str, plain: Callable[..., torch.Tensor]) -> None:
        self.name, self.plain = name, plain
        self.fusion = name.startswith(FUSION_BLOCKS)
        self.view: LayerView | None = None

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        if self.view is None or encoder_hidden_states is not None:  # no bank, or attn1 as cross-attention
            return self.plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        return banked_attention(attn, hidden_states, self.view)


def banked_attention(attn: Any, hidden_states: torch.Tensor, view: LayerView) -> torch.Tensor:
    """Self-attention over [now ; bank] (hidden_states [B, T, C], attn1 of a transformer block), then fusion."""
    batch, tokens, _ = hidden_states.shape
    rows = view.rows
    query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
    past_keys, past_values, past_outputs = view.past()
    # [B, T·(1 + F)]: this frame's tokens always, a ring slot's tokens while it holds a frame.
    slots = view.valid.shape[0]
    valid = view.valid[:, None].expand(slots, tokens).reshape(slots * tokens)
    attend = torch.cat([torch.ones(tokens, dtype=torch.bool, device=valid.device), valid])
    keys = torch.cat([key, view.twins(past_keys, batch)], dim=1)
    values = torch.cat([value, view.twins(past_values, batch)], dim=1)
    heads = attn.heads
    head_dim = key.shape[-1] // heads
    query = query.view(batch, -1, heads, head_dim).transpose(1, 2)
    keys = keys.view(batch, -1, heads, head_dim).transpose(1, 2)
    values = values.view(batch, -1, heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        keys = attn.norm_k(keys)
    out = F.scaled_dot_product_attention(query, keys, values, attn_mask=attend.view(1, 1, 1, -1))
    out = out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)
    out = attn.to_out[1](attn.to_out[0](out))
    if attn.residual_connection:
        out = out + hidden_states
    out = out / attn.rescale_output_factor
    view.keep(key[batch - rows :], value[batch - rows :], out[batch - rows :])
    if past_outputs is None:
        return out
    return fuse(out, view.twins(past_outputs, batch), valid, view.strength, view.threshold)


def fuse(
    out: torch.Tensor, bank: torch.Tensor, valid: torch.Tensor, strength: torch.Tensor, threshold: torch.Tensor
) -> torch.Tensor:
    """Nearest-neighbour fusion: out [B, T, C], bank [B, F·T, C], valid [F·T] bool → out blended, per token, with
    its most similar valid bank feature where their cosine similarity reaches the threshold."""
    similarity = F.normalize(out, dim=-1) @ F.normalize(bank, dim=-1).transpose(1, 2)  # [B, T, F·T]
    similarity = similarity.masked_fill(~valid, -2.0)  # an empty slot is never the nearest (cosine ≥ −1)
    best, index = similarity.max(dim=-1)
    nearest = bank.gather(1, index[..., None].expand_as(out))
    weight = (best >= threshold).to(out.dtype)[..., None] * strength
    return out + weight * (nearest - out)


def install_processors(unet: torch.nn.Module) -> dict[str, BankAttnProcessor]:
    """The bank processors on every attn1 layer (idempotent; the modules are shared by every pipeline built from
    the same models). Other processors (cross-attention, IP-Adapter's) are left as they are."""
    processors = dict(unet.attn_processors)
    if not all(isinstance(p, BankAttnProcessor) for n, p in processors.items() if n.endswith(ATTN1)):
        unet.set_attn_processor(
            {
                name: BankAttnProcessor(name, p) if name.endswith(ATTN1) and not isinstance(p, BankAttnProcessor) else p
                for name, p in processors.items()
            }
        )
        processors = dict(unet.attn_processors)
    return {name: p for name, p in processors.items() if isinstance(p, BankAttnProcessor)}


def layer_shapes(unet: torch.nn.Module, latent_size: tuple[int, int]) -> dict[str, tuple[int, int, int]]:
    """attn1 layer name → (tokens T, key width D, output width C) at this latent size (h, w)."""
    levels = len(unet.config.block_out_channels)
    h, w = latent_size
    shapes: dict[str, tuple[int, int, int]] = {}
    for name, module in unet.named_modules():
        if not name.endswith(".attn1"):
            continue
        block, _, rest = name.partition(".")
        level = levels - 1 if block == "mid_block" else int(rest.split(".")[0])
        if block == "up_blocks":
            level = levels - 1 - level
        scale = 2**level
        shapes[name + ".processor"] = (
            -(-h // scale) * -(-w // scale),
            module.to_k.out_features,
            module.to_out[0].out_features,
        )
    return shapes


@dataclass
class BankLayer:
    """One attn1 layer's ring [r, F, T, ·] and this frame's features [r, T, ·], at fixed addresses."""

    rows: int
    keys: torch.Tensor
    values: torch.Tensor
    outputs: torch.Tensor | None  # only in fusion layers
    fresh_keys: torch.Tensor
    fresh_values: torch.Tensor
    fresh_outputs: torch.Tensor
    valid: torch.Tensor
    strength: torch.Tensor
    threshold: torch.Tensor

    def past(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        r, frames, tokens, _ = self.keys.shape
        flat = lambda ring: ring.view(r, frames * tokens, ring.shape[-1])  # noqa: E731  (a view: no copy)
        return flat(self.keys), flat(self.values), None if self.outputs is None else flat(self.outputs)

    def keep(self, keys: torch.Tensor, values: torch.Tensor, outputs: torch.Tensor) -> None:
        self.fresh_keys.copy_(keys)
        self.fresh_values.copy_(values)
        if self.outputs is not None:
            self.fresh_outputs.copy_(outputs)

    def twins(self, past: torch.Tensor, batch: int) -> torch.Tensor:
        # the batch is fixed for a captured step (a CFG strategy): a view when there are no uncond rows
        return past if batch == self.rows else torch.cat([past[: batch - self.rows], past])

    def rings(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        pairs = [(self.keys, self.fresh_keys), (self.values, self.fresh_values)]
        return pairs if self.outputs is None else [*pairs, (self.outputs, self.fresh_outputs)]


class FeatureBank:
    """A pipeline's bank: the rings of every attn1 layer for its r latent rows, and the device counters."""

    def __init__(
        self, unet: torch.nn.Module, rows: int, latent_size: tuple[int, int], device: torch.device, dtype: torch.dtype
    ) -> None:
        self.unet, self.rows, self.latent_size, self.device, self.dtype = unet, rows, latent_size, device, dtype
        self.processors: dict[str, BankAttnProcessor] = {}
        self.layers: dict[str, BankLayer] = {}
        self.frames = 0  # F, the ring's size (0: no bank)
        count = lambda: torch.zeros((), dtype=torch.int64, device=device)  # noqa: E731
        self.head, self.fill, self.frame = count(), count(), count()  # next slot, slots filled, frames since reset
        self.interval = count()
        self.strength = torch.zeros((), dtype=dtype, device=device)
        self.threshold = torch.zeros((), dtype=dtype, device=device)
        self.valid = torch.zeros(0, dtype=torch.bool, device=device)
        self._slots = torch.zeros(0, dtype=torch.int64, device=device)

    @property
    def active(self) -> bool:
        return self.frames > 0

    def configure(self, config: FeatureBankConfig) -> bool:
        """Apply a config: the live numbers in place; True when the rings were made anew (the step must be
        captured again), which empties the bank."""
        self.interval.fill_(config.interval)
        self.strength.fill_(config.fusion_strength)
        self.threshold.fill_(config.fusion_threshold)
        frames = config.max_frames if config.enabled else 0
        if frames == self.frames:
            return False
        self.frames = frames
        self._allocate()
        return True

    def _allocate(self) -> None:
        frames, r = self.frames, self.rows
        self.layers = {}
        self.valid = torch.zeros(frames, dtype=torch.bool, device=self.device)
        self._slots = torch.arange(frames, device=self.device)
        self.reset()
        if not frames:
            return
        self.processors = install_processors(self.unet)
        empty = lambda *shape: torch.zeros(shape, dtype=self.dtype, device=self.device)  # noqa: E731
        for name, (tokens, width, channels) in layer_shapes(self.unet, self.latent_size).items():
            fusion = self.processors[name].fusion
            self.layers[name] = BankLayer(
                rows=r,
                keys=empty(r, frames, tokens, width),
                values=empty(r, frames, tokens, width),
                outputs=empty(r, frames, tokens, channels) if fusion else None,
                fresh_keys=empty(r, tokens, width),
                fresh_values=empty(r, tokens, width),
                fresh_outputs=empty(r, tokens, channels) if fusion else empty(0),
                valid=self.valid,
                strength=self.strength,
                threshold=self.threshold,
            )
        size = sum(t.numel() * t.element_size() for layer in self.layers.values() for t, _ in layer.rings())
        log.info("feature bank: %d frames x %d rows over %d layers (%.1f MB)", frames, r, len(self.layers), size / 1e6)

    def reset(self) -> None:
        """Empty (a reset of the stream): every slot invalid, counters at 0; buffers kept where they are."""
        for counter in (self.head, self.fill, self.frame):
            counter.zero_()
        self.valid.zero_()

    @contextmanager
    def bound(self) -> Iterator[None]:
        """The processors read and write this bank for the calls inside (one UNet call)."""
        for name, layer in self.layers.items():
            self.processors[name].view = layer
        try:
            yield
        finally:
            for name in self.layers:
                self.processors[name].view = None

    def store(self) -> None:
        """After the UNet call: this frame's features into the ring's head slot, every `interval` frames (a masked
        write: no branch, no host sync); then the counters advance."""
        update = torch.remainder(self.frame, self.interval) == 0  # 0-dim bool
        slot = self.head.view(1)
        for layer in self.layers.values():
            for ring, fresh in layer.rings():
                kept = ring.index_select(1, slot)  # [r, 1, T, ·]
                ring.index_copy_(1, slot, torch.where(update, fresh.unsqueeze(1), kept))
        step = update.to(torch.int64)
        self.head.copy_(torch.remainder(self.head + step, self.frames))
        self.fill.copy_(torch.clamp(self.fill + step, max=self.frames))
        torch.lt(self._slots, self.fill, out=self.valid)
        self.frame.add_(1)

    def engine_extras(self) -> Any:
        """The bank as a TensorRT engine's inputs (the rings, flat, bound in place) and outputs (this frame's
        features), for engine/backends/tensorrt.py. The engine is built for this ring size (its key says it): a
        change of enabled or max_frames needs another engine, a rebuild."""
        from engine.backends.tensorrt import EngineExtras

        processors = install_processors(self.unet)
        inputs: dict[str, torch.Tensor] = {
            "bank_valid": self.valid,
            "fusion_strength": self.strength,
            "fusion_threshold": self.threshold,
        }
        outputs: dict[str, torch.Tensor] = {}
        for i, name in enumerate(processors):
            layer = self.layers[name]
            past = layer.past()
            fresh = (layer.fresh_keys, layer.fresh_values, layer.fresh_outputs)
            for kind, ring, new in zip(("keys", "values", "outputs"), past, fresh, strict=True):
                if ring is not None:
                    inputs[f"bank_{kind}_{i}"], outputs[f"new_{kind}_{i}"] = ring, new

        def profile(low: int, opt: int, high: int) -> dict[str, Any]:
            sizes = [layer_shapes(self.unet, (side, side)) for side in (low, opt, high)]
            shapes: dict[str, Any] = {}
            for i, name in enumerate(processors):
                for kind in ("keys", "values", "outputs"):
                    if f"bank_{kind}_{i}" in inputs:
                        width = 2 if kind == "outputs" else 1
                        shapes[f"bank_{kind}_{i}"] = tuple(
                            (self.rows, self.frames * size[name][0], size[name][width]) for size in sizes
                        )
            return shapes

        def export(path: Path, rows: int, latent_size: tuple[int, int]) -> Path:
            return export_banked_unet(self.unet, path, self.rows, self.frames, latent_size)[0]

        return EngineExtras(export, profile, inputs, outputs, {"feature_bank_frames": self.frames})

    def snapshot(self) -> list[torch.Tensor]:
        """Copies of every buffer the step changes (for warm-up and capture runs, which must leave no trace)."""
        rings = [ring for layer in self.layers.values() for ring, _ in layer.rings()]
        return [t.clone() for t in (*rings, self.head, self.fill, self.frame, self.valid)]

    def restore(self, saved: list[torch.Tensor]) -> None:
        rings = [ring for layer in self.layers.values() for ring, _ in layer.rings()]
        for tensor, kept in zip((*rings, self.head, self.fill, self.frame, self.valid), saved, strict=True):
            tensor.copy_(kept)


class BankedUNet:
    """The UNet backend with the bank bound around each call, then stored. While the bank is off it calls the
    backend straight through: the path is chosen when the bank is configured, not per frame."""

    def __init__(self, inner: Callable[..., torch.Tensor], bank: FeatureBank) -> None:
        self.inner, self.bank = inner, bank
        self.choose()

    def choose(self) -> None:
        self._call: Callable[..., torch.Tensor] = self._banked if self.bank.active else self.inner

    def __call__(
        self, x: torch.Tensor, t: torch.Tensor, embeddings: torch.Tensor, *residuals: Any, **added: Any
    ) -> torch.Tensor:
        return self._call(x, t, embeddings, *residuals, **added)

    def _banked(
        self, x: torch.Tensor, t: torch.Tensor, embeddings: torch.Tensor, *residuals: Any, **added: Any
    ) -> torch.Tensor:
        # added: SDXL's added conditioning (added=...), passed through
        with self.bank.bound():
            eps = self.inner(x, t, embeddings, *residuals, **added)
        self.bank.store()
        return eps


# ---- the bank as a graph's inputs and outputs (ONNX, TensorRT) --------------------------------------------------


class ExportLayer:
    """One layer's bank as graph inputs (the past, flat [r, F·T, ·]) and outputs (this frame's features)."""

    def __init__(
        self,
        rows: int,
        past: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
        valid: torch.Tensor,
        strength: torch.Tensor,
        threshold: torch.Tensor,
    ) -> None:
        self.rows, self._past, self.valid, self.strength, self.threshold = rows, past, valid, strength, threshold
        self.kept: list[torch.Tensor] = []

    def past(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        return self._past

    def keep(self, keys: torch.Tensor, values: torch.Tensor, outputs: torch.Tensor) -> None:
        self.kept = [keys, values] if self._past[2] is None else [keys, values, outputs]

    def twins(self, past: torch.Tensor, batch: int) -> torch.Tensor:
        # The batch is dynamic in the graph (guidance ≤ 1 drops the uncond rows): row i reads bank row i for the
        # B − r leading uncond rows, row i − (B − r) after them.
        index = torch.arange(batch, device=past.device)
        extra = batch - self.rows
        return past.index_select(0, index - extra * (index >= extra).to(index.dtype))


def bank_io_names(processors: dict[str, BankAttnProcessor]) -> tuple[list[str], list[str]]:
    """(bank inputs after sample, timestep, encoder_hidden_states; bank outputs after latent), in layer order:
    bank_valid [F] bool, fusion_strength, fusion_threshold [] then per layer i bank_keys_i, bank_values_i
    [r, F·T_i, D_i] (and bank_outputs_i [r, F·T_i, C_i] in fusion layers); out: new_keys_i, new_values_i [r, T_i, D_i]
    (and new_outputs_i)."""
    inputs, outputs = ["bank_valid", "fusion_strength", "fusion_threshold"], []
    for i, processor in enumerate(processors.values()):
        kinds = ("keys", "values", "outputs") if processor.fusion else ("keys", "values")
        inputs += [f"bank_{kind}_{i}" for kind in kinds]
        outputs += [f"new_{kind}_{i}" for kind in kinds]
    return inputs, outputs


class BankedUNetGraph(torch.nn.Module):
    """The UNet with the bank as inputs and this frame's features as outputs (what ONNX and TensorRT see; the ring
    update stays in torch, FeatureBank.store)."""

    def __init__(self, unet: torch.nn.Module, rows: int) -> None:
        super().__init__()
        self.unet, self.rows = unet, rows
        self.processors = install_processors(unet)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        bank_valid: torch.Tensor,
        fusion_strength: torch.Tensor,
        fusion_threshold: torch.Tensor,
        *bank: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        layers, position = [], 0
        for processor in self.processors.values():
            width = 3 if processor.fusion else 2
            keys, values, *outputs = bank[position : position + width]
            position += width
            past = (keys, values, outputs[0] if outputs else None)
            layers.append(ExportLayer(self.rows, past, bank_valid, fusion_strength, fusion_threshold))
            processor.view = layers[-1]
        try:
            latent = self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
        finally:
            for processor in self.processors.values():
                processor.view = None
        return (latent, *(tensor for layer in layers for tensor in layer.kept))


@torch.no_grad()
def export_banked_unet(
    unet: torch.nn.Module, path: Path, rows: int, frames: int, latent_size: tuple[int, int]
) -> tuple[Path, list[str], list[str]]:
    """unet.onnx with the bank (bank_io_names) for r = `rows` bank rows and F = `frames` ring slots: the batch B
    (r..2r rows, by CFG strategy) and the latent size are dynamic, F is fixed. → (path, inputs, outputs)."""
    graph = BankedUNetGraph(unet, rows).eval()
    weight = next(unet.parameters())
    device, dtype = weight.device, weight.dtype
    channels, dim = int(unet.config.in_channels), int(unet.config.cross_attention_dim)
    h, w = latent_size
    bank_inputs, bank_outputs = bank_io_names(graph.processors)
    bank: list[torch.Tensor] = []
    shapes = layer_shapes(unet, latent_size)
    for name, processor in graph.processors.items():  # the graph's order
        tokens, width, out_width = shapes[name]
        widths = (width, width, out_width) if processor.fusion else (width, width)
        bank += [torch.randn(rows, frames * tokens, each, dtype=dtype, device=device) for each in widths]
    example = (
        torch.randn(rows, channels, h, w, dtype=dtype, device=device),
        torch.full((rows,), 500, dtype=torch.int64, device=device),
        torch.randn(rows, TEXT_TOKENS, dim, dtype=dtype, device=device),
        torch.ones(frames, dtype=torch.bool, device=device),
        torch.tensor(0.5, dtype=dtype, device=device),
        torch.tensor(0.9, dtype=dtype, device=device),
        *bank,
    )
    dynamic = {
        "sample": {0: "batch", 2: "height", 3: "width"},
        "timestep": {0: "batch"},
        "encoder_hidden_states": {0: "batch"},
        UNET_OUTPUT: {0: "batch", 2: "height", 3: "width"},
        **{name: {1: f"{name}_tokens"} for name in bank_inputs[3:]},
        **{name: {1: f"{name}_tokens"} for name in bank_outputs},
    }
    inputs = [*UNET_INPUTS, *bank_inputs]
    outputs = [UNET_OUTPUT, *bank_outputs]
    return export_module(graph, example, path, inputs, outputs, dynamic), inputs, outputs
