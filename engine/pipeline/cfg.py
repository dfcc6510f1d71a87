"""Classifier-free guidance strategies, chosen once at prepare (never a per-frame `if cfg_type`).

Each strategy says how to lay out the UNet batch and its text embeddings, and how to turn the UNet's
output into the guided noise prediction ε̂ (DESIGN.md step 4). Rows per UNet call, for r latent rows
(r = n·f with Stream Batch, f in sequential mode):
  Plain r · Full 2r · Residual r · Initialize f + r.
"""

from __future__ import annotations

from typing import Protocol, get_args

import torch

from engine.config.schema import CfgType


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

    def __init__(self, guidance: float) -> None:
        self.guidance = guidance

    def unet_batch(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([x, x]), torch.cat([t, t])

    def embeddings(self, cond: torch.Tensor, uncond: torch.Tensor, rows: int) -> torch.Tensor:
        return torch.cat([uncond.repeat(rows, 1, 1), cond.repeat(rows, 1, 1)])

    def combine(self, out: torch.Tensor, stock_noise: torch.Tensor) -> torch.Tensor:
        eps_uncond, eps_cond = out.chunk(2)
        return eps_uncond + self.guidance * (eps_cond - eps_uncond)


class Residual:
    """Residual CFG (RCFG "self"): the negative is the carried residual noise, ε_u = δ·s, at no UNet cost.

    With guidance ≤ 1 the guidance term is off (ε̂ = ε_c) but the residual is still carried, as in the
    reference, so raising guidance later picks up a warm residual.
    """

    residual = True

    def __init__(self, guidance: float, delta: float) -> None:
        self.guidance = guidance
        self.delta = delta

    def unet_batch(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, t

    def embeddings(self, cond: torch.Tensor, uncond: torch.Tensor, rows: int) -> torch.Tensor:
        return cond.repeat(rows, 1, 1)

    def combine(self, out: torch.Tensor, stock_noise: torch.Tensor) -> torch.Tensor:
        return self._guide(out, stock_noise)

    def _guide(self, eps_cond: torch.Tensor, stock_noise: torch.Tensor) -> torch.Tensor:
        if self.guidance <= 1.0:
            return eps_cond
        eps_uncond = stock_noise * self.delta
        return eps_uncond + self.guidance * (eps_cond - eps_uncond)


class Initialize(Residual):
    """RCFG "initialize" (alias onetime): one true negative per new frame, [X_0 ; X] with [uncond×f ; cond],
    written into the residual noise's first f rows, then as Residual."""

    def __init__(self, guidance: float, delta: float, frame_buffer_size: int) -> None:
        super().__init__(guidance, delta)
        self.frames = frame_buffer_size

    def unet_batch(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.frames
        return torch.cat([x[:f], x]), torch.cat([t[:f], t])

    def embeddings(self, cond: torch.Tensor, uncond: torch.Tensor, rows: int) -> torch.Tensor:
        return torch.cat([uncond.repeat(self.frames, 1, 1), cond.repeat(rows, 1, 1)])

    def combine(self, out: torch.Tensor, stock_noise: torch.Tensor) -> torch.Tensor:
        f = self.frames
        stock_noise[:f].copy_(out[:f])
        return self._guide(out[f:], stock_noise)


def select_cfg(cfg_type: CfgType, guidance: float, delta: float, frame_buffer_size: int) -> CfgStrategy:
    """The strategy for these settings. As in the reference, guidance ≤ 1 (or cfg none) means no
    uncond rows at all: full falls back to Plain and initialize to Residual."""
    if cfg_type not in get_args(CfgType):
        raise ValueError(f"unknown cfg_type {cfg_type!r} (allowed: {', '.join(get_args(CfgType))})")
    guided = guidance > 1.0
    if cfg_type == "none" or (cfg_type == "full" and not guided):
        return Plain()
    if cfg_type == "full":
        return Full(guidance)
    if cfg_type == "self" or not guided:
        return Residual(guidance, delta)
    return Initialize(guidance, delta, frame_buffer_size)
