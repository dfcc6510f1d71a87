"""Classifier-free guidance strategies, chosen once at prepare (never a per-frame `if cfg_type`).

Each strategy says how to lay out the UNet batch and its text embeddings, and how to turn the UNet's
output into the guided noise prediction ε̂ (DESIGN.md step 4). Rows per UNet call, for r latent rows
(r = n·f with Stream Batch, f in sequential mode):
  Plain r · Full 2r · ResidualOnly r · Residual r · Initialize f + r.

The guidance scale g and the residual strength δ are 0-dim device tensors (GuidanceScalars), shared by the
pipeline and its strategy and written in place: a live change of g or δ reaches a captured CUDA graph
without a re-capture. Only a change of strategy (guidance crossing 1) changes what the step computes.
"""

from __future__ import annotations

from typing import Protocol, get_args

import torch

from engine.config.schema import CfgType, StreamConfig


class GuidanceScalars:
    """g and δ as 0-dim tensors on the device, allocated once and updated in place (no host sync)."""

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        self.guidance = torch.ones((), device=device, dtype=dtype)
        self.delta = torch.ones((), device=device, dtype=dtype)

    def set(self, guidance: float, delta: float) -> None:
        self.guidance.fill_(guidance)
        self.delta.fill_(delta)


class CfgStrategy(Protocol):
    residual: bool  # whether the residual ("stock") noise is carried between frames (RCFG)

    def unet_batch(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [r, C, h, w], t: [r] → the UNet's input rows and timesteps."""
        ...

    def embeddings(self, cond: torch.Tensor, uncond: torch.Tensor, rows: int) -> torch.Tensor:
        """cond, uncond: [1, L, D] → [unet rows, L, D], aligned with unet_batch's rows."""
        ...

    def combine(self, out: torch.Tensor, stock_noise: torch.Tensor) -> torch.Tensor:
        """UNet output → ε̂ [r, C, h, w]. stock_noise: [r, C, h, w], may be written in place."""
        ...


class Plain:
    """No guidance: cfg none, or full with guidance ≤ 1. ε̂ = ε_c."""

    residual = False

    def unet_batch(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, t

    def embeddings(self, cond: torch.Tensor, uncond: torch.Tensor, rows: int) -> torch.Tensor:
        return cond.repeat(rows, 1, 1)

    def combine(self, out: torch.Tensor, stock_noise: torch.Tensor) -> torch.Tensor:
        return out


class Full:
    """Full CFG: every row twice, [X ; X] with [uncond ; cond]. ε̂ = ε_u + g·(ε_c − ε_u)."""

    residual = False

    def __init__(self, scalars: GuidanceScalars) -> None:
        self.guidance = scalars.guidance

    def unet_batch(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([x, x]), torch.cat([t, t])

    def embeddings(self, cond: torch.Tensor, uncond: torch.Tensor, rows: int) -> torch.Tensor:
        return torch.cat([uncond.repeat(rows, 1, 1), cond.repeat(rows, 1, 1)])

    def combine(self, out: torch.Tensor, stock_noise: torch.Tensor) -> torch.Tensor:
        eps_uncond, eps_cond = out.chunk(2)
        return eps_uncond + self.guidance * (eps_cond - eps_uncond)


class ResidualOnly(Plain):
    """Residual CFG with guidance ≤ 1: the guidance term is off (ε̂ = ε_c) but the residual is still carried,
    as in the reference, so raising guidance later picks up a warm residual."""

    residual = True


class Residual(ResidualOnly):
    """Residual CFG (RCFG "self"): the negative is the carried residual noise, ε_u = δ·s, at no UNet cost."""

    def __init__(self, scalars: GuidanceScalars) -> None:
        self.guidance, self.delta = scalars.guidance, scalars.delta

    def combine(self, out: torch.Tensor, stock_noise: torch.Tensor) -> torch.Tensor:
        eps_uncond = stock_noise * self.delta
        return eps_uncond + self.guidance * (out - eps_uncond)


class Initialize(Residual):
    """RCFG "initialize" (alias onetime): one true negative per new frame, [X_0 ; X] with [uncond×f ; cond],
    written into the residual noise's first f rows, then as Residual."""

    def __init__(self, scalars: GuidanceScalars, frame_buffer_size: int) -> None:
        super().__init__(scalars)
        self.frames = frame_buffer_size

    def unet_batch(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.frames
        return torch.cat([x[:f], x]), torch.cat([t[:f], t])

    def embeddings(self, cond: torch.Tensor, uncond: torch.Tensor, rows: int) -> torch.Tensor:
        return torch.cat([uncond.repeat(self.frames, 1, 1), cond.repeat(rows, 1, 1)])

    def combine(self, out: torch.Tensor, stock_noise: torch.Tensor) -> torch.Tensor:
        f = self.frames
        stock_noise[:f].copy_(out[:f])
        return super().combine(out[f:], stock_noise)


def strategy_type(cfg_type: CfgType, guidance: float) -> type[CfgStrategy]:
    """The strategy for these settings. As in the reference, guidance ≤ 1 (or cfg none) means no uncond
    rows at all: full falls back to Plain and self/initialize to ResidualOnly."""
    if cfg_type not in get_args(CfgType):
        raise ValueError(f"unknown cfg_type {cfg_type!r} (allowed: {', '.join(get_args(CfgType))})")
    if cfg_type == "none":
        return Plain
    guided = guidance > 1.0
    if not guided:
        return Plain if cfg_type == "full" else ResidualOnly
    return {"full": Full, "self": Residual, "initialize": Initialize}[cfg_type]


def select_cfg(cfg_type: CfgType, guidance: float, scalars: GuidanceScalars, frame_buffer_size: int) -> CfgStrategy:
    """A new strategy object for these settings, reading g and δ from `scalars`."""
    chosen = strategy_type(cfg_type, guidance)
    if chosen is Initialize:
        return Initialize(scalars, frame_buffer_size)
    if chosen in (Full, Residual):
        return chosen(scalars)  # type: ignore[call-arg]
    return chosen()


def guided_unet_rows(cfg_type: CfgType, rows: int, frame_buffer_size: int) -> int:
    """UNet rows per call when guidance is on: none/self r, initialize f + r, full 2r."""
    return {"none": rows, "self": rows, "initialize": frame_buffer_size + rows, "full": 2 * rows}[cfg_type]


def max_unet_rows(stream: StreamConfig) -> int:
    """The most rows one UNet call takes for this stream (with guidance on), the size an engine is built for:
    r latent rows per call (n·f with Stream Batch, f in sequential mode). With guidance ≤ 1 it takes r rows."""
    frames = stream.frame_buffer_size
    rows = len(stream.t_index_list) * frames if stream.use_denoising_batch else frames
    return guided_unet_rows(stream.cfg_type, rows, frames)
