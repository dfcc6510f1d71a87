"""feedback: the previous output frame, zoomed, panned and rotated, mixed into the frame, x ← x + s·(warped − x).

In image_pre it feeds the output back into the input before encode (Deforum's loopback; with strength 1, or with
no input at all, a self-feeding tunnel); in image_post it leaves trails on the output. The transform applies once
per frame, so it compounds: zoom 1.02 zooms in 2 % a frame.

Each output pixel p (normalised to [−1, 1], corner pixel centres at ±1) samples the previous frame at
q = R(−θ)·(p − t)/zoom (in pixels, t the pan): that sampling grid [f, H, W, 2] is computed when a param changes,
not per frame, and written into a fixed buffer. The border mode is folded into the grid too (border: q clamped to
the frame; reflection: q mirrored at its edges; zeros: black outside), so that step() runs the same grid_sample
whatever the params: under stream.cuda_graph no param change needs a re-capture.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from engine.pipeline.processors.context import StageContext

_GEOMETRY = ("zoom", "pan_x", "pan_y", "rotation", "border")


class Feedback:
    def __init__(self, stage: str, context: StageContext) -> None:
        f, height, width = context.frames, context.height, context.width
        options = {"device": context.device, "dtype": context.dtype}
        self.size = (height, width)
        # previous: [f, 3, H, W] in [−1, 1], the last output frames; black before the first one
        self.previous = torch.full((f, 3, height, width), -1.0, **options)
        # The sampling runs in float32 whatever the model's dtype: in float16 a normalised coordinate is off by up
        # to a quarter pixel at 512 wide, an error the feedback would compound frame after frame.
        exact = {"device": context.device, "dtype": torch.float32}
        self._lifted = torch.zeros((f, 3, height, width), **exact)  # previous + 1: grid_sample's zeros are black
        self.grid = torch.zeros((f, height, width, 2), **exact)  # where each output pixel samples previous
        self.strength = torch.zeros((), **options)  # s, a device scalar
        self.state = (self.previous,)
        self._geometry: tuple[Any, ...] | None = None

    def set(self, params: dict[str, Any]) -> None:
        self.strength.fill_(float(params["strength"]))
        geometry = tuple(params[name] for name in _GEOMETRY)
        if geometry != self._geometry:  # a strength change alone leaves the grid as it is
            self.grid.copy_(sampling_grid(*geometry, self.size, self.grid.device, self.grid.dtype).unsqueeze(0))
            self._geometry = geometry

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # x: [f, 3, H, W] in [−1, 1] → the mix (x itself is left as it is). A new tensor laid out as x is (the
        # loader's frames are channels-last): the encoder then computes exactly as without this processor at 0.
        torch.add(self.previous, 1.0, out=self._lifted)
        warped = F.grid_sample(self._lifted, self.grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return torch.lerp(x, warped.sub_(1.0).to(x.dtype), self.strength)

    def remember(self, latent: torch.Tensor, image: torch.Tensor) -> None:
        self.previous.copy_(image)

    def reset(self) -> None:
        self.previous.fill_(-1.0)


def sampling_grid(
    zoom: float,
    pan_x: float,
    pan_y: float,
    rotation: float,
    border: str,
    size: tuple[int, int],
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """[H, W, 2] (x, y) in grid_sample's normalised coordinates (align_corners=True) for these params."""
    height, width = size
    half_w, half_h = (width - 1) / 2, (height - 1) / 2  # pixels from the centre to a corner pixel's centre
    ys, xs = torch.meshgrid(
        torch.linspace(-half_h, half_h, height, dtype=torch.float64),
        torch.linspace(-half_w, half_w, width, dtype=torch.float64),
        indexing="ij",
    )
    xs, ys = xs - pan_x * width, ys - pan_y * height  # p − t, in pixels (y points down)
    theta = math.radians(rotation)  # counter-clockwise on screen, where y points down
    cos, sin = math.cos(theta) / zoom, math.sin(theta) / zoom
    grid = torch.stack([(cos * xs - sin * ys) / half_w, (sin * xs + cos * ys) / half_h], dim=-1)
    if border == "border":
        grid = grid.clamp(-1.0, 1.0)
    elif border == "reflection":  # mirrored at ±1, period 4
        grid = 1.0 - ((grid + 1.0).remainder(4.0) - 2.0).abs()
    return grid.to(device=device, dtype=dtype)
