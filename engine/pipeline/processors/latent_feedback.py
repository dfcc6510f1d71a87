"""latent_feedback: this frame's latent blended with the previous output latent, x ← x + s·(previous − x).

In latent_pre the rows are the new frames' x_t[:f] = a_0·ℓ + b_0·z_0 (noised to the first timestep), so the
previous output latent x0 is noised the same way first (a_0·x0 + b_0·z_0): the blend then equals blending the
clean latents before the noise, (1 − s)·ℓ + s·x0. In latent_post the rows are the finishing slot's x0 and the
previous one is the output as it left (after this blend): an exponential moving average of the output latent.
Strength 0 leaves the rows exactly as they were; 1 repeats the previous output (a frozen picture).
"""

from __future__ import annotations

from typing import Any

import torch

from engine.pipeline.processors.context import StageContext


class LatentFeedback:
    def __init__(self, stage: str, context: StageContext) -> None:
        # previous: [f, C, h, w], the last output latent (noised to τ_0 in latent_pre); zeros before the first frame
        self.previous = torch.zeros((context.frames, *context.latent_shape), device=context.device, dtype=context.dtype)
        self.strength = torch.zeros((), device=context.device, dtype=context.dtype)  # s, a device scalar
        self.state = (self.previous,)
        self._noised = context.noised_to_first if stage == "latent_pre" else None

    def set(self, params: dict[str, Any]) -> None:
        self.strength.fill_(float(params["strength"]))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # x: [f, C, h, w], a pipeline buffer: blended in place
        return x.lerp_(self.previous, self.strength)

    def remember(self, latent: torch.Tensor, image: torch.Tensor) -> None:
        if self._noised is not None:
            self._noised(latent, self.previous)
        else:
            self.previous.copy_(latent)

    def reset(self) -> None:
        self.previous.zero_()
