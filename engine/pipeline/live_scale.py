"""A live multiplier on a module's output: a 0-dim device tensor, written in place, applied by a forward hook.

peft keeps a LoRA's scaling, and diffusers an IP-Adapter's scale, as a Python float per layer: a new value is a new
constant to torch.compile (a recompile) and to a CUDA graph (a re-capture). Both deltas are linear in the output of
one projection (a LoRA's up projection lora_B; an IP-Adapter's value projection to_v_ip, which has no bias), so
multiplying that output by a tensor scales the delta exactly. The tensor keeps its address for the pipeline's life
(set() is a fill_), so a compiled graph reads it as an input and a captured graph replays with the new value.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


class LiveScale:
    """One live number (a LoRA weight, the IP-Adapter scale) on every module it is hooked into."""

    def __init__(
        self, value: float, device: torch.device, dtype: torch.dtype, storage: torch.Tensor | None = None
    ) -> None:
        """storage: a 0-dim view into a buffer of several numbers (a TensorRT engine input reads the buffer)."""
        self.value = torch.full((), value, device=device, dtype=dtype) if storage is None else storage  # 0-dim
        self.value.fill_(value)
        self._handles: list[Any] = []

    def set(self, value: float) -> None:
        self.value.fill_(value)

    def hook(self, modules: Iterable[torch.nn.Module]) -> int:
        """Multiply each module's output by the value from now on; returns how many modules."""
        for module in modules:
            self._handles.append(module.register_forward_hook(self._scale))
        return len(self._handles)

    def _scale(self, module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        return output * self.value

    def unhook(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
