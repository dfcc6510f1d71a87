"""ControlNet preprocessors: the input frame [f, 3, H, W] in [−1, 1] → the control image [f, 3, H, W] in [0, 1].

canny and soft_edge are torch ops with fixed kernels (no weights) on the engine's device, inside the step (and its
CUDA graph); their live parameters are 0-dim device tensors written in place. depth runs a transformers
depth-estimation model (Depth-Anything-V2-Small class), loaded when a pipeline with a depth ControlNet is built.
none and external pass the image through (external's comes from a second source, engine/live/control_sources.py).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from engine.config.schema import ControlNetConfig
from engine.core.errors import DreamwireError
from engine.pipeline.models import from_pretrained

log = logging.getLogger(__name__)

DEPTH_SIZE = 518  # px: Depth-Anything's input side at most (512 px frames go in at 518, as its processor does)
_LUMA = (0.299, 0.587, 0.114)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
HYSTERESIS_STEPS = 8  # canny: how far (px) a strong edge grows along weak ones, a fixed count (no host sync)


class Preprocessor(Protocol):
    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """[f, 3, H, W] in [−1, 1] → [f, 3, H, W] in [0, 1]."""
        ...

    def set(self, config: ControlNetConfig) -> None:
        """A live change of the ControlNet's parameters (in place, no re-capture)."""
        ...


class PassThrough:
    """none, external: the image itself, in [0, 1]."""

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return (image + 1) * 0.5

    def set(self, config: ControlNetConfig) -> None:
        return None


class _Kernels:
    """Luma weights and the Sobel and Gaussian kernels [1, 1, k, k], made once on the device (never per frame: a
    tensor made from host numbers inside the step would be an upload, and cannot be captured in a CUDA graph)."""

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        self.luma_weights = torch.tensor(_LUMA, dtype=dtype).view(1, 3, 1, 1).to(device)
        sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
        self.sobel_x = sobel.view(1, 1, 3, 3).to(device, dtype)
        self.sobel_y = sobel.t().contiguous().view(1, 1, 3, 3).to(device, dtype)
        g = torch.exp(-((torch.arange(5.0) - 2) ** 2) / (2 * 1.4**2))
        g = torch.outer(g, g)
        self.gauss = (g / g.sum()).view(1, 1, 5, 5).to(device, dtype)

    def luma255(self, image: torch.Tensor) -> torch.Tensor:
        """[f, 3, H, W] in [−1, 1] → luma [f, 1, H, W] on OpenCV's 0–255 scale (float32)."""
        return ((image.float() + 1) * 127.5 * self.luma_weights).sum(1, keepdim=True)

    def gradients(self, luma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        padded = F.pad(luma, (1, 1, 1, 1), mode="replicate")
        return F.conv2d(padded, self.sobel_x), F.conv2d(padded, self.sobel_y)

    def blur(self, luma: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(luma, (2, 2, 2, 2), mode="replicate"), self.gauss)


class Canny:
    """Canny edges: Gaussian blur, Sobel gradient, non-maximum suppression along the gradient's direction (four
    directions), double threshold and hysteresis (weak edges kept where they touch strong ones)."""

    def __init__(self, config: ControlNetConfig, device: torch.device, dtype: torch.dtype) -> None:
        # float32 throughout: thresholds on the 0-255 scale and the direction test want the precision
        self.kernels = _Kernels(device, torch.float32)
        self.low = torch.zeros((), device=device)
        self.high = torch.zeros((), device=device)
        self.set(config)

    def set(self, config: ControlNetConfig) -> None:
        self.low.fill_(config.canny_low)
        self.high.fill_(config.canny_high)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        luma = self.kernels.blur(self.kernels.luma255(image))
        gx, gy = self.kernels.gradients(luma)
        magnitude = torch.sqrt(gx * gx + gy * gy)
        thin = magnitude * _is_ridge(magnitude, gx, gy)
        weak = thin >= self.low
        edges = (thin >= self.high) & weak
        for _ in range(HYSTERESIS_STEPS):
            edges = (F.max_pool2d(edges.float(), 3, stride=1, padding=1) > 0) & weak
        return edges.to(image.dtype).expand(-1, 3, -1, -1)


def _is_ridge(magnitude: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
    """Non-maximum suppression: 1 where the magnitude is at least its two neighbours along the gradient."""
    padded = F.pad(magnitude, (1, 1, 1, 1))
    h, w = magnitude.shape[-2:]

    def at(dy: int, dx: int) -> torch.Tensor:
        return padded[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    # Direction of the gradient in [0°, 180°), quantised to 0, 45, 90, 135 (image rows grow downwards).
    angle = torch.rad2deg(torch.atan2(gy, gx)) % 180
    horizontal = (angle < 22.5) | (angle >= 157.5)
    diagonal = (angle >= 22.5) & (angle < 67.5)
    vertical = (angle >= 67.5) & (angle < 112.5)
    first = torch.where(
        horizontal, at(0, 1), torch.where(diagonal, at(1, 1), torch.where(vertical, at(1, 0), at(1, -1)))
    )
    second = torch.where(
        horizontal, at(0, -1), torch.where(diagonal, at(-1, -1), torch.where(vertical, at(-1, 0), at(-1, 1)))
    )
    return ((magnitude >= first) & (magnitude >= second)).to(magnitude.dtype)


class SoftEdge:
    """Soft edges: the Sobel gradient magnitude at three scales (1, 1/2, 1/4), summed, normalised per frame."""

    SCALES = (1, 2, 4)

    def __init__(self, config: ControlNetConfig, device: torch.device, dtype: torch.dtype) -> None:
        self.kernels = _Kernels(device, torch.float32)

    def set(self, config: ControlNetConfig) -> None:
        return None

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        luma = self.kernels.luma255(image)
        size = luma.shape[-2:]
        total = torch.zeros_like(luma)
        for scale in self.SCALES:
            small = F.avg_pool2d(luma, scale) if scale > 1 else luma
            gx, gy = self.kernels.gradients(small)
            magnitude = torch.sqrt(gx * gx + gy * gy)
            total += (
                F.interpolate(magnitude, size=size, mode="bilinear", align_corners=False) if scale > 1 else magnitude
            )
        peak = total.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
        return (total / peak).to(image.dtype).expand(-1, 3, -1, -1)


class Depth:
    """Relative depth (near is bright) from a transformers depth-estimation model, normalised per frame."""

    def __init__(self, model: Any, device: torch.device, dtype: torch.dtype) -> None:
        self.model = model
        self.patch = _patch_size(model)
        self.mean = torch.tensor(_IMAGENET_MEAN, device=device, dtype=dtype).view(1, 3, 1, 1)
        self.std = torch.tensor(_IMAGENET_STD, device=device, dtype=dtype).view(1, 3, 1, 1)

    def set(self, config: ControlNetConfig) -> None:
        return None

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        side = min(DEPTH_SIZE, -(-max(height, width) // self.patch) * self.patch)  # a multiple of the patch size
        pixels = F.interpolate((image + 1) * 0.5, size=(side, side), mode="bilinear", align_corners=False)
        depth = self.model(pixel_values=(pixels - self.mean) / self.std).predicted_depth  # [f, h', w']
        depth = F.interpolate(depth.unsqueeze(1), size=(height, width), mode="bilinear", align_corners=False)
        low = depth.amin(dim=(1, 2, 3), keepdim=True)
        high = depth.amax(dim=(1, 2, 3), keepdim=True)
        return ((depth - low) / (high - low).clamp_min(1e-6)).to(image.dtype).expand(-1, 3, -1, -1)


def _patch_size(model: Any) -> int:
    config = model.config
    backbone = getattr(config, "backbone_config", None)
    return int(getattr(backbone, "patch_size", None) or getattr(config, "patch_size", None) or 14)


def load_depth_model(model_id: str, device: torch.device, dtype: torch.dtype) -> Any:
    """A transformers depth-estimation model by hub id or folder (engine/pipeline/models.py's loading rules)."""
    from transformers import AutoModelForDepthEstimation

    model = from_pretrained(AutoModelForDepthEstimation, model_id, "depth model", torch_dtype=dtype)
    log.info("loaded depth model %s", model_id)
    return model.to(device).eval().requires_grad_(False)


def make_preprocessor(
    config: ControlNetConfig, device: torch.device, dtype: torch.dtype, depth_model: Any = None
) -> Preprocessor:
    if config.preprocess_on == "source":  # made on the input's source thread (engine/live/source_controls.py)
        try:
            import cv2  # noqa: F401  (there, for every frame: refused now rather than on the first frame)
        except ImportError:
            raise DreamwireError(
                "controlnets preprocess_on source needs OpenCV: pip install 'dreamwire[camera]' "
                "(opencv-python-headless), or preprocess_on gpu"
            ) from None
        return PassThrough()
    if config.preprocessor == "canny":
        return Canny(config, device, dtype)
    if config.preprocessor == "soft_edge":
        return SoftEdge(config, device, dtype)
    if config.preprocessor == "depth":
        return Depth(depth_model, device, dtype)
    return PassThrough()
