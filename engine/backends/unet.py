"""The UNet backend protocol, `ε = unet(x, t, embeddings)`, and its eager PyTorch implementation."""

from __future__ import annotations

from typing import Protocol

import torch


class UNetBackend(Protocol):
    def __call__(self, x: torch.Tensor, t: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """x: [B, C, h, w] latents, t: [B] int64 timesteps, embeddings: [B, L, D] → ε: [B, C, h, w]."""
        ...


class EagerUNet:
    def __init__(self, unet: torch.nn.Module) -> None:
        self.unet = unet

    def __call__(self, x: torch.Tensor, t: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=embeddings, return_dict=False)[0]
