"""The VAE backend protocol: the image ↔ latent codec that a backend may accelerate.

engine/pipeline/codec.py's codecs (AutoencoderKL, TAESD) are the eager implementations; a backend wraps
their two calls and keeps their shapes and scaling.
"""

from __future__ import annotations

from typing import Protocol

import torch


class VaeBackend(Protocol):
    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """image: [B, 3, H, W] in [−1, 1] → latent [B, C, H/s, W/s], scaled."""
        ...

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent: [B, C, h, w], scaled → image [B, 3, h·s, w·s] in about [−1, 1]."""
        ...
