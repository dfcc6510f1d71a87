"""Eager PyTorch, made fast without changing the maths: the `none` acceleration.

On CUDA the UNet and the VAE run channels_last (NHWC), the layout cuDNN's fp16/bf16 tensor-core convolutions
use natively, so no layout transposes surround each convolution; attention runs through PyTorch's
scaled_dot_product_attention (flash / memory-efficient kernels). The dtype (float16 on CUDA and Metal by
default, bfloat16 on request) is set when the models load. On Apple's Metal (mps) an op that PyTorch runs on
the CPU instead is logged once, by name.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import torch

log = logging.getLogger(__name__)
_MPS_FALLBACK_TEXT = "fall back to run on the CPU"


def prepare_modules(unet: torch.nn.Module, vae: torch.nn.Module, device: torch.device) -> None:
    """In place and idempotent (the modules are shared by every pipeline built from the same models)."""
    _use_sdpa(unet)
    if device.type == "cuda":
        unet.to(memory_format=torch.channels_last)
        vae.to(memory_format=torch.channels_last)


def _use_sdpa(unet: torch.nn.Module) -> None:
    """Swap the legacy matmul-softmax attention processor for the SDPA one (diffusers' default where torch has
    SDPA); custom processors (IP-Adapter, ...) are left alone."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    processors = getattr(unet, "attn_processors", {})
    if any(type(p) is AttnProcessor for p in processors.values()):
        unet.set_attn_processor(
            {name: AttnProcessor2_0() if type(p) is AttnProcessor else p for name, p in processors.items()}
        )
        log.info("UNet attention: scaled_dot_product_attention")


class CpuFallbackLog:
    """Runs a call and logs, once per op, each Metal (mps) op that PyTorch ran on the CPU instead (it warns
    about each such op once per process; PYTORCH_ENABLE_MPS_FALLBACK=1 must be set for it to fall back at all)."""

    seen: ClassVar[set[str]] = set()  # shared: an op falls back for every pipeline alike

    def __init__(self, call: Callable[..., torch.Tensor]) -> None:
        self.call = call

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = self.call(*args, **kwargs)
        for warning in caught:
            text = str(warning.message)
            if _MPS_FALLBACK_TEXT not in text:
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
            elif text not in self.seen:
                self.seen.add(text)
                op = text.split("'")[1] if text.count("'") >= 2 else text
                log.warning("mps: %s runs on the CPU (slower); this is logged once", op)
        return out


class MpsVae:
    """A VAE backend whose two calls log Metal CPU fallbacks."""

    def __init__(self, vae: Any) -> None:
        self.encode = CpuFallbackLog(vae.encode)
        self.decode = CpuFallbackLog(vae.decode)
