"""ControlNet preprocessing on the input's source thread (`controlnets.<i>.preprocess_on: source`): canny and
soft_edge with OpenCV on each conformed input frame, so the engine thread does no preprocessing.

The source thread (engine/live/io_threads.py's SourceWorker, `derive`) makes the control images of the running
pipeline's source-side ControlNets from each frame it conforms, with their live thresholds as they are then, and
hands them on with the frame (Frame.controls). Before a step the engine thread uploads the control images of the
frames it takes (a separate FrameLoader: the input's buffer is in use), so they always belong to the same frames
as the input; a frame made before a rebuild's pipeline existed carries none, and the last control image is held.

What differs from the torch path (engine/pipeline/preprocess.py), on the same frame: canny goes through an 8-bit
blur and OpenCV's Canny (Sobel aperture 3, L2 gradient, hysteresis to any length; ours stops after 8 px), so
edge pixels differ along weak edges (tests/test_controlnet_source.py states the bound); soft_edge is the same sum
of Sobel magnitudes at three scales, quantised to 8 bits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from engine.core.errors import DreamwireError
from engine.core.frames import Frame
from engine.pipeline.image import FrameLoader
from engine.pipeline.preprocess import SoftEdge
from engine.pipeline.stream import StreamPipeline

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
OPENCV_EXTRA = "pip install 'dreamwire[camera]' (opencv-python-headless)"


def import_cv2() -> Any:
    try:
        import cv2
    except ImportError:
        raise DreamwireError(f"controlnets preprocess_on source needs OpenCV: {OPENCV_EXTRA}") from None
    return cv2


def canny(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """(H, W, 3) uint8 RGB → (H, W, 3) uint8 edges (0 or 255): blur 5x5 σ 1.4, then OpenCV's Canny."""
    cv2 = import_cv2()
    luma = np.clip(image.astype(np.float32) @ _LUMA + 0.5, 0, 255).astype(np.uint8)
    blurred = cv2.GaussianBlur(luma, (5, 5), 1.4, borderType=cv2.BORDER_REPLICATE)
    edges = cv2.Canny(blurred, float(low), float(high), L2gradient=True)
    return np.repeat(edges[:, :, None], 3, axis=2)


def soft_edge(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB → (H, W, 3) uint8: Sobel magnitude at scales 1, 1/2, 1/4, summed, normalised per frame."""
    cv2 = import_cv2()
    luma = image.astype(np.float32) @ _LUMA
    height, width = luma.shape
    total = np.zeros_like(luma)
    for scale in SoftEdge.SCALES:
        area = cv2.INTER_AREA  # an average over scale x scale pixels, as avg_pool2d
        small = luma if scale == 1 else cv2.resize(luma, (width // scale, height // scale), interpolation=area)
        gx = cv2.Sobel(small, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REPLICATE)
        gy = cv2.Sobel(small, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REPLICATE)
        magnitude = np.sqrt(gx * gx + gy * gy)
        total += magnitude if scale == 1 else cv2.resize(magnitude, (width, height), interpolation=cv2.INTER_LINEAR)
    peak = max(float(total.max()), 1e-6)
    out = np.clip(total / peak * 255 + 0.5, 0, 255).astype(np.uint8)
    return np.repeat(out[:, :, None], 3, axis=2)


class SourceControls:
    """`derive` for the input's SourceWorker (source thread) and `load` before each step (engine thread)."""

    def __init__(self, pipeline: Callable[[], StreamPipeline | None]) -> None:
        self._pipeline = pipeline  # the pipeline in effect (one attribute read from the source thread)
        self._loaders: dict[int, FrameLoader] = {}  # per pipeline (id): its size, batch and device

    def __call__(self, image: np.ndarray) -> dict[int, np.ndarray] | None:
        """Source thread: the control images of `image` for the source-side ControlNets, by index."""
        pipeline = self._pipeline()
        if pipeline is None or pipeline.controlnets is None:
            return None
        controls = {}
        for index, unit in enumerate(pipeline.controlnets.units):
            config = unit.config
            if config.preprocess_on == "source" and config.preprocessor == "canny":
                controls[index] = canny(image, config.canny_low, config.canny_high)
            elif config.preprocess_on == "source":
                controls[index] = soft_edge(image)
        return controls or None

    def load(self, pipeline: StreamPipeline, frames: Sequence[Frame]) -> None:
        """Engine thread, before a step: the control images of these frames into `pipeline`."""
        if pipeline.controlnets is None:
            return
        for index, unit in enumerate(pipeline.controlnets.units):
            if unit.config.preprocess_on != "source":
                continue
            images = [frame.controls.get(index) if frame.controls else None for frame in frames]
            if any(image is None or image.shape[:2] != frames[0].image.shape[:2] for image in images):
                continue  # made for another pipeline (a rebuild): the last control image is held
            pipeline.set_control_frame(index, self._loader(pipeline)(np.stack(images)))  # type: ignore[arg-type]

    def _loader(self, pipeline: StreamPipeline) -> FrameLoader:
        loader = self._loaders.get(id(pipeline))
        if loader is None:
            self._loaders = {id(pipeline): pipeline.frame_loader()}  # only the newest pipeline's
            loader = self._loaders[id(pipeline)]
        return loader
