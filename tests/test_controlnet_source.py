"""ControlNet preprocessing on the input's source thread (engine/live/source_controls.py, `preprocess_on: source`):
OpenCV's canny and soft_edge against the torch path on the same frames (the stated bounds), and end to end: the
source thread makes the control images, with the live thresholds, and the engine thread only uploads them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SIZE, preset
from test_controlnet_external import step_until

from bridges.pattern import PatternSource, pattern_image
from engine.config.schema import ControlNetConfig
from engine.live.loop import LiveEngine
from engine.live.source_controls import canny, soft_edge
from engine.pipeline.models import Models
from engine.pipeline.preprocess import Canny, PassThrough, SoftEdge

CPU = torch.device("cpu")
# The bounds, on the moving test pattern at 64 and 256 px: soft_edge within one 8-bit step (the OpenCV result is
# uint8); canny: at most 1% of the pixels differ (8-bit blur, OpenCV's unbounded hysteresis; measured: ≤ 0.33%).
SOFT_EDGE_MAX = 1 / 255
CANNY_DIFFERING = 0.01


def as_input(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0 * 2.0 - 1.0


@pytest.mark.parametrize("size", [64, 256])
def test_opencv_on_the_source_thread_matches_the_torch_path(size):
    config = ControlNetConfig(model="random", canny_low=50.0, canny_high=120.0)
    for index in (0, 5, 11):
        image = pattern_image(index, size, size)
        ours = Canny(config, CPU, torch.float32)(as_input(image))[0].permute(1, 2, 0).numpy()
        theirs = canny(image, 50.0, 120.0) / 255.0
        differing = float((ours != theirs).mean())
        assert ours.mean() > 0.005 and differing <= CANNY_DIFFERING, (index, differing)
        smooth = SoftEdge(config, CPU, torch.float32)(as_input(image))[0].permute(1, 2, 0).numpy()
        assert float(np.abs(smooth - soft_edge(image) / 255.0).max()) <= SOFT_EDGE_MAX


def test_only_canny_and_soft_edge_run_on_the_source_thread():
    with pytest.raises(ValueError, match="preprocess_on source with preprocessor 'depth': only canny and soft_edge"):
        ControlNetConfig(model="random", preprocessor="depth", preprocess_on="source")


def test_the_source_thread_makes_the_control_images_with_the_live_thresholds(tiny_taesd_models: Models):
    config = preset()
    config.controlnets = [
        ControlNetConfig(model="random", preprocessor="canny", preprocess_on="source", canny_low=20, canny_high=60)
    ]
    engine = LiveEngine(config, models=Models(**{**tiny_taesd_models.__dict__, "loaded": {}}))
    try:
        unit = engine.pipeline.controlnets.units[0]
        assert isinstance(unit.preprocess, PassThrough)  # the engine thread does no preprocessing
        engine.start_io(source=PatternSource(SIZE, SIZE, fps=0), sinks=[])
        step_until(engine, lambda: bool((unit.external[0] > 0).any()))  # edges arrived, made on the source thread
        assert set(unit.external.unique().tolist()) <= {-1.0, 1.0}  # binary edges (in [−1, 1], as a frame)
        torch.testing.assert_close(unit.image[0], (unit.external[0] + 1) / 2)  # what the net sees
        engine.set("controlnets.0.canny_high", 2000.0)  # no gradient is that strong: no edge at all
        engine.set("controlnets.0.canny_low", 1999.0)
        step_until(engine, lambda: not bool((unit.external[0] > 0).any()))
    finally:
        engine.close()
