"""Image ↔ latent codecs, chosen once from the VAE's class (not from its name).

AutoencoderKL samples its latent with the stream's seeded generator (as the reference does, so seeds
match); AutoencoderTiny (TAESD) is deterministic. Both scale by the VAE config's scaling_factor.
"""

from __future__ import annotations

from typing import Protocol

import torch


class Codec(Protocol):
    latent_channels: int
    scale_factor: int  # image pixels per latent pixel, per side

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """image: [B, 3, H, W] in [−1, 1] → latent [B, C, H/s, W/s], scaled."""
        ...

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent: [B, C, h, w], scaled → image [B, 3, h·s, w·s] in about [−1, 1]."""
        ...


class KLCodec:
    def __init__(self, vae: torch.nn.Module, generator: torch.Generator) -> None:
        self.vae = vae
        self.generator = generator  # CPU generator shared with the stream's initial noise
        self.scaling = float(vae.config.scaling_factor)
        self.latent_channels = int(vae.config.latent_channels)
        self.scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(image).latent_dist.sample(generator=self.generator) * self.scaling

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent / self.scaling, return_dict=False)[0]


class TinyCodec:
    def __init__(self, vae: torch.nn.Module) -> None:
        self.vae = vae
        self.scaling = float(vae.config.scaling_factor)
        self.latent_channels = int(vae.config.latent_channels)
        self.scale_factor = 2 ** (len(vae.config.encoder_block_out_channels) - 1)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(image).latents * self.scaling

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent / self.scaling, return_dict=False)[0]


def make_codec(vae: torch.nn.Module, generator: torch.Generator) -> Codec:
    from diffusers import AutoencoderKL, AutoencoderTiny

    if isinstance(vae, AutoencoderTiny):
        return TinyCodec(vae)
    if isinstance(vae, AutoencoderKL):
        return KLCodec(vae, generator)
    raise TypeError(f"unsupported VAE class {type(vae).__name__} (expected AutoencoderKL or AutoencoderTiny)")
