"""What every processor is built with (StageContext) and what it offers (Processor), engine/pipeline/stages.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch


@dataclass(frozen=True)
class StageContext:
    """What a processor is built for: the pipeline's shapes, device and dtype, and its noise."""

    frames: int  # f
    height: int
    width: int
    latent_shape: tuple[int, int, int]  # (C, h, w)
    device: torch.device
    dtype: torch.dtype
    noised_to_first: Callable[[torch.Tensor, torch.Tensor], None]  # (x0 [f, C, h, w], out): a_0·x0 + b_0·z_0


class Processor(Protocol):
    """A processor: `set(params)` between frames (into its device tensors), `__call__(x)` in step(),
    `remember(latent, image)` after each step, `reset()` with the pipeline's, and `state`, the buffers that carry
    from frame to frame (kept across a capture's warm-up runs, cleared by a reset)."""

    state: tuple[torch.Tensor, ...]

    def set(self, params: dict[str, Any]) -> None: ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def remember(self, latent: torch.Tensor, image: torch.Tensor) -> None: ...

    def reset(self) -> None: ...
