"""An `external` ControlNet's control image from a second source, end to end over shm: (engine/live/control_sources.py):
the newest frame of the second source reaches the ControlNet, and when that source stops its last image is held
with one warning."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable

import numpy as np
import pytest
import torch
from conftest import SIZE, preset

from bridges.pattern import PatternSource
from bridges.shm import ShmWriter
from engine.config.schema import ControlNetConfig
from engine.core.errors import DreamwireError
from engine.live.loop import LiveEngine
from engine.pipeline.models import Models


def control_frame(value: int) -> np.ndarray:
    """A white square on a grey ground: (SIZE, SIZE, 3) uint8."""
    image = np.full((SIZE, SIZE, 3), value, dtype=np.uint8)
    image[16:48, 16:48] = 255
    return image


def as_input(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).float() / 255.0 * 2.0 - 1.0


def step_until(engine: LiveEngine, done: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.perf_counter() + timeout
    while not done():
        assert time.perf_counter() < deadline, "timed out"
        engine.apply_pending_controls()
        engine.step()


def test_external_control_image_over_shm_end_to_end(tiny_taesd_models: Models, caplog: pytest.LogCaptureFixture):
    name = f"dwt-{uuid.uuid4().hex[:10]}"
    writer = ShmWriter(name, SIZE, SIZE)
    value, stop = [40], threading.Event()

    def feed() -> None:  # the second feed: a steady stream, as TouchDesigner sends one
        while not stop.wait(0.02):
            writer.write(control_frame(value[0]))

    feeder = threading.Thread(target=feed, name="test-control-feed")
    writer.write(control_frame(value[0]))
    config = preset()
    config.controlnets = [ControlNetConfig(model="random", preprocessor="external", input=f"shm:{name}", scale=1.0)]
    engine = LiveEngine(config, models=Models(**{**tiny_taesd_models.__dict__, "loaded": {}}))
    try:
        feeder.start()
        engine.start_io(source=PatternSource(SIZE, SIZE, fps=0), sinks=[])
        unit = engine.pipeline.controlnets.units[0]
        for value[0] in (40, 120):  # the newest frame of the second source, each time it changes
            expected = as_input(control_frame(value[0]))
            step_until(engine, lambda expected=expected: torch.allclose(unit.external[0], expected, atol=1e-6))
        # The net sees it: the control image of every UNet row is that frame in [0, 1].
        torch.testing.assert_close(unit.image[0], (expected + 1) / 2)
        with caplog.at_level(logging.WARNING, logger="engine.live.control_sources"):
            stop.set()
            feeder.join()
            writer.close()  # the second source stops: its last image is held, one warning
            step_until(engine, lambda: any(r.name == "engine.live.control_sources" for r in caplog.records))
            for _ in range(3):
                engine.step()
        # one warning of ours (the source worker logs its own read failure, as for the main input)
        warnings = [r.getMessage() for r in caplog.records if r.name == "engine.live.control_sources"]
        assert len(warnings) == 1 and f"controlnets.0: the external source shm:{name}" in warnings[0]
        assert "its last control image is held" in warnings[0]
        assert torch.allclose(unit.external[0], expected, atol=1e-6)
    finally:
        stop.set()
        if feeder.is_alive():
            feeder.join()
        engine.close()
        writer.close()


def test_an_external_input_that_cannot_be_opened_is_an_error_at_start(tiny_taesd_models: Models):
    config = preset()
    config.controlnets = [ControlNetConfig(model="random", preprocessor="external", input="bogus:thing")]
    engine = LiveEngine(config, models=Models(**{**tiny_taesd_models.__dict__, "loaded": {}}))
    try:
        with pytest.raises(DreamwireError, match="bogus"):
            engine.start_io(source=PatternSource(SIZE, SIZE, fps=0), sinks=[])
    finally:
        engine.close()
