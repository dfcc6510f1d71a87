"""Host frames ↔ model tensors at the engine's boundary."""

from __future__ import annotations

import numpy as np
import torch


def to_model_input(frames: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """frames: (f, H, W, 3) uint8, or float in [0, 1] → [f, 3, H, W] in [−1, 1] on the device."""
    tensor = torch.from_numpy(np.ascontiguousarray(frames)).to(device=device, non_blocking=True)
    if tensor.dtype == torch.uint8:
        tensor = tensor.to(torch.float32) / 255.0
    tensor = tensor.permute(0, 3, 1, 2).to(dtype)
    return tensor * 2.0 - 1.0


def to_unit_range(image: torch.Tensor) -> torch.Tensor:
    """[f, 3, H, W] in about [−1, 1] → [f, H, W, 3] float in [0, 1] (same device)."""
    return (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[f, 3, H, W] in about [−1, 1] → (f, H, W, 3) uint8 on the host (the sink's sync point)."""
    unit = to_unit_range(image)
    return (unit * 255.0).round().to(torch.uint8).cpu().numpy()
