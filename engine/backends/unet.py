"""UNet backends, chosen once from stream.acceleration: every backend is `ε = unet(x, t, embeddings)`."""

from __future__ import annotations

from typing import Protocol

import torch

from engine.core.errors import DreamwireError


class UNetBackend(Protocol):
    def __call__(self, x: torch.Tensor, t: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """x: [B, C, h, w] latents, t: [B] int64 timesteps, embeddings: [B, L, D] → ε: [B, C, h, w]."""
        ...


class EagerUNet:
    def __init__(self, unet: torch.nn.Module) -> None:
        self.unet = unet

    def __call__(self, x: torch.Tensor, t: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=embeddings, return_dict=False)[0]


def make_unet_backend(acceleration: str, unet: torch.nn.Module) -> UNetBackend:
    if acceleration == "none":
        return EagerUNet(unet)
    if acceleration == "tensorrt":
        # Never fall back silently to eager PyTorch: the user asked for TensorRT.
        raise DreamwireError(
            "stream.acceleration 'tensorrt': the TensorRT backend is not part of this build yet; "
            "use stream.acceleration=none"
        )
    raise DreamwireError(f"stream.acceleration {acceleration!r} is unknown (allowed: none, tensorrt)")
