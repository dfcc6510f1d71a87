"""The `compile` acceleration: the UNet and the VAE's encode/decode through torch.compile (Inductor).

dynamic=False: each input shape gets its own specialised graph (a new shape recompiles once; the stream's
shapes are fixed, so that is once per pipeline shape). The compiled functions are module-level and shared,
so a rebuilt pipeline on the same models reuses the compiled code. Compilation happens on the first call,
which StreamPipeline.prepared() makes during its warm-up. A failure there follows the no-silent-fallback
rule (fallback.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from engine.backends.fallback import Fallback
from engine.backends.unet import AddedCond, Residuals, unet_forward
from engine.backends.vae import VaeBackend
from engine.core.errors import DreamwireError


def _unet_forward(
    unet: torch.nn.Module,
    x: torch.Tensor,
    t: torch.Tensor,
    embeddings: torch.Tensor,
    residuals: Residuals | None,
    added: AddedCond | None,
) -> torch.Tensor:
    return unet_forward(unet, x, t, embeddings, residuals, added)


def _encode(vae: VaeBackend, image: torch.Tensor) -> torch.Tensor:
    return vae.encode(image)


def _decode(vae: VaeBackend, latent: torch.Tensor) -> torch.Tensor:
    return vae.decode(latent)


@functools.cache
def compiled(function: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """torch.compile of a module-level function, made once (it holds no model: models are its arguments)."""
    return torch.compile(function, dynamic=False)


class _Guarded:
    """Calls the compiled function; on a failure applies the fallback rule and, if allowed, goes eager for good."""

    def __init__(self, function: Callable[..., torch.Tensor], what: str, fallback: Fallback) -> None:
        self.eager, self.what, self.fallback = function, what, fallback
        self.call = compiled(function)

    def __call__(self, *args: Any) -> torch.Tensor:
        try:
            return self.call(*args)
        except DreamwireError:
            raise
        except Exception as error:  # Inductor/Triton/compiler errors come in many types: all mean "compile failed"
            shape = next((list(a.shape) for a in args if isinstance(a, torch.Tensor)), [])
            self.fallback.failed(f"stream.acceleration 'compile': {self.what} (input {shape})", error)
            self.call = self.eager
            return self.eager(*args)


class CompiledUNet:
    def __init__(self, unet: torch.nn.Module, fallback: Fallback) -> None:
        self.unet = unet
        self._forward = _Guarded(_unet_forward, "the UNet", fallback)

    def __call__(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        embeddings: torch.Tensor,
        residuals: Residuals | None = None,
        added: AddedCond | None = None,
    ) -> torch.Tensor:
        return self._forward(self.unet, x, t, embeddings, residuals, added)


class CompiledVae:
    def __init__(self, vae: VaeBackend, fallback: Fallback) -> None:
        self.vae = vae
        self._encode = _Guarded(_encode, "the VAE encoder", fallback)
        self._decode = _Guarded(_decode, "the VAE decoder", fallback)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return self._encode(self.vae, image)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self._decode(self.vae, latent)
