"""Host frames ↔ model tensors at the engine's boundary."""

from __future__ import annotations

import logging

import numpy as np
import torch

log = logging.getLogger(__name__)


def _pinned(shape: tuple[int, ...], device: torch.device) -> torch.Tensor | None:
    """A page-locked host buffer for copies to and from a CUDA device, None elsewhere. From pageable memory the
    driver first copies through a staging buffer of its own, on the host, between frames: the GPU bench's
    profile showed the GPU idle ~0.3 ms a frame around those copies (H200, img2img 1 step 512x512)."""
    return torch.empty(shape, dtype=torch.uint8, pin_memory=True) if device.type == "cuda" else None


class FrameLoader:
    """Host frames → the model's input, through buffers allocated once.

    __call__: (f, H, W, 3) uint8, or float in [0, 1] → [f, 3, H, W] in [−1, 1] on the device (a channels-last
    view of the loader's buffer, valid until the next call). Frames of another size are resized (bilinear,
    antialiased; logged once). The arithmetic is x/255·2 − 1 in that order, as the reference computes it.
    """

    def __init__(self, frames: int, height: int, width: int, device: torch.device, dtype: torch.dtype) -> None:
        self.size = (height, width)
        self.device, self.dtype = device, dtype
        shape = (frames, height, width, 3)
        self.pinned = _pinned(shape, device)  # CUDA: uint8 frames land here, then one asynchronous upload
        self.staging = torch.empty(shape, dtype=torch.uint8, device=device)  # uint8 upload
        self.buffer = torch.empty(shape, dtype=dtype, device=device)
        self._warned_resize = False

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        host = torch.from_numpy(np.ascontiguousarray(frames))
        if tuple(host.shape[1:3]) != self.size:
            return self._resized(host)
        if host.dtype == torch.uint8:
            # Upload uint8 (4x fewer bytes than float), convert on the device. The pinned buffer is free again
            # by the next call: that call comes after the sink's sync on this frame's output, which the stream
            # orders after this upload.
            source = host
            if self.pinned is not None and host.shape == self.pinned.shape:
                source = self.staging.copy_(self.pinned.copy_(host), non_blocking=True)
            elif self.device.type != "cpu":
                source = self.staging.copy_(host, non_blocking=True)
            self.buffer.copy_(source).div_(255.0)
        else:
            self.buffer.copy_(host, non_blocking=True)
        return self.buffer.mul_(2.0).sub_(1.0).permute(0, 3, 1, 2)

    def _resized(self, host: torch.Tensor) -> torch.Tensor:
        if not self._warned_resize:
            log.warning(
                "input frames are %dx%d; resizing to the stream's %dx%d",
                host.shape[2],
                host.shape[1],
                self.size[1],
                self.size[0],
            )
            self._warned_resize = True
        tensor = host.to(self.device).permute(0, 3, 1, 2).to(torch.float32)
        if host.dtype == torch.uint8:
            tensor = tensor / 255.0
        tensor = torch.nn.functional.interpolate(tensor, size=self.size, mode="bilinear", antialias=True)
        return (tensor.clamp(0, 1) * 2.0 - 1.0).to(self.dtype)


def to_unit_range(image: torch.Tensor) -> torch.Tensor:
    """[f, 3, H, W] in about [−1, 1] → [f, H, W, 3] float in [0, 1] (same device)."""
    # y·0.5 is exact (a power of two), so this equals the reference's (y/2 + 0.5).clamp(0, 1), in one allocation.
    return image.mul(0.5).add_(0.5).clamp_(0, 1).permute(0, 2, 3, 1)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[f, 3, H, W] in about [−1, 1] → (f, H, W, 3) uint8 on the host (the sink's sync point)."""
    return _uint8_on_device(image).cpu().numpy()


def _uint8_on_device(image: torch.Tensor) -> torch.Tensor:
    return to_unit_range(image).mul_(255.0).round_().to(torch.uint8)


class HostFrames:
    """The model's output → host frames, what to_uint8 computes, through a pinned buffer allocated once on CUDA
    (one DMA copy, no driver staging). __call__: [f, 3, H, W] → (f, H, W, 3) uint8, a fresh array each call:
    sinks keep the frames they are handed, so a reused buffer must never reach them."""

    def __init__(self, frames: int, height: int, width: int, device: torch.device) -> None:
        self.pinned = _pinned((frames, height, width, 3), device)

    def __call__(self, image: torch.Tensor) -> np.ndarray:
        if self.pinned is None:
            return to_uint8(image)
        self.pinned.copy_(_uint8_on_device(image), non_blocking=True)
        if image.is_cuda:  # the sink's sync point: wait until the frame is on the host
            torch.cuda.current_stream(image.device).synchronize()
        return self.pinned.numpy().copy()
