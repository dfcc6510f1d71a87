"""Issue 7, defect 9: malformed frames from a source are checked and converted where they enter (the source worker)
and the preview encodes only checked frames; what cannot be converted is one log line, not a crash."""

from __future__ import annotations

import io
import logging
import time
import urllib.request

import numpy as np
from conftest import SIZE
from PIL import Image

from bridges.preview import PreviewSink
from engine.config.schema import Preset
from engine.core.frames import Frame
from engine.core.slot import LatestFrameSlot
from engine.live.io_threads import SourceWorker
from engine.live.loop import LiveEngine


class ScriptedSource:
    """Hands out the given images in turn (one every `delay` seconds), then ends the stream."""

    name = "scripted"

    def __init__(self, images: list[object], delay: float = 0.0) -> None:
        self.images = list(images)
        self.index = 0
        self.delay = delay

    def open(self) -> None: ...

    def read(self) -> Frame | None:
        if self.index >= len(self.images):
            return None
        time.sleep(self.delay)
        frame = Frame(self.images[self.index], self.index, time.perf_counter())  # type: ignore[arg-type]
        self.index += 1
        return frame

    def close(self) -> None: ...


def _rgba_float64(size: int = SIZE) -> np.ndarray:
    image = np.zeros((size, size, 4), np.float64)
    image[..., 0], image[..., 3] = 0.5, 1.0
    return image


def _drain(images: list[object]) -> list[Frame]:
    slot: LatestFrameSlot[Frame] = LatestFrameSlot()
    taken: list[Frame] = []
    original_put = slot.put
    slot.put = lambda frame: (taken.append(frame), original_put(frame))  # type: ignore[method-assign]
    worker = SourceWorker(ScriptedSource(images), slot)
    worker.start()
    assert worker.finished.wait(5.0)
    worker.stop()
    return taken


def test_the_source_worker_hands_on_rgb_uint8_only(caplog):
    bad_shape = np.zeros((SIZE, SIZE, 2), np.uint8)
    with caplog.at_level(logging.WARNING):
        frames = _drain([_rgba_float64(), bad_shape, bad_shape, bad_shape, np.zeros((SIZE, SIZE), np.float32)])
    assert [f.index for f in frames] == [0, 4]  # the three (H, W, 2) frames are dropped
    for frame in frames:
        assert frame.image.dtype == np.uint8 and frame.image.shape == (SIZE, SIZE, 3)
    assert frames[0].image[0, 0].tolist() == [128, 0, 0]
    dropped = [r for r in caplog.records if "cannot be converted" in r.getMessage()]
    assert len(dropped) == 1 and "shape (64, 64, 2)" in dropped[0].getMessage()


def test_the_engine_runs_on_rgba_float64_frames(tiny_taesd_models):
    preset = Preset.model_validate(
        {
            "model": {"id": "tiny", "vae": "tiny-taesd", "dtype": "float32", "device": "cpu"},
            "stream": {"width": SIZE, "height": SIZE, "t_index_list": [16, 32]},
            "io": {"input": "pattern:", "outputs": []},
        }
    )
    engine = LiveEngine(preset, models=tiny_taesd_models)
    images: list[object] = [_rgba_float64() for _ in range(600)]
    images.insert(2, np.zeros((3, 3, 3, 3), np.uint8))  # not an image at all: dropped, never reaches the model
    source = ScriptedSource(images, delay=0.05)  # paced (for up to 30 s): a burst would mostly be dropped
    engine.start_io(source=source, sinks=[])
    try:
        deadline = time.perf_counter() + 30
        while engine.frame_number < 2 and time.perf_counter() < deadline:
            engine.step()
    finally:
        engine.close()
    assert engine.frame_number >= 2
    assert engine.source_worker is None  # closed cleanly
    assert engine.io.last_outputs[0].image.shape == (SIZE, SIZE, 3)


def test_the_preview_encodes_converted_frames_and_skips_malformed_ones(caplog):
    sink = PreviewSink(port=0)
    sink.open()
    try:
        sink.write(Frame(_rgba_float64(16), 0, 0.0))
        with urllib.request.urlopen(f"{sink.url}frame.jpg", timeout=5) as reply:
            first = np.asarray(Image.open(io.BytesIO(reply.read())))
        assert first.shape == (16, 16, 3) and abs(int(first[0, 0, 0]) - 128) <= 3
        with caplog.at_level(logging.WARNING):
            for _ in range(3):
                sink.write(Frame(np.zeros((4, 4, 5), np.uint8), 1, 0.0))
        with urllib.request.urlopen(f"{sink.url}frame.jpg", timeout=5) as reply:
            assert np.asarray(Image.open(io.BytesIO(reply.read()))).shape == (16, 16, 3)  # the last good frame
    finally:
        sink.close()
    assert len([r for r in caplog.records if "cannot be converted" in r.getMessage()]) == 1


def test_the_source_boundary_fits_frames_to_the_stream_with_the_uris_fit(tiny_taesd_models):
    preset = Preset.model_validate(
        {
            "model": {"id": "tiny", "vae": "tiny-taesd", "dtype": "float32", "device": "cpu"},
            "stream": {"width": SIZE, "height": SIZE, "t_index_list": [16, 32]},
            "io": {"input": f"pattern:?width={2 * SIZE}&height={SIZE}&fps=0&fit=letterbox", "outputs": []},
        }
    )
    engine = LiveEngine(preset, models=tiny_taesd_models)
    engine.start_io(sinks=[])
    try:
        frame = engine.input_slot.get(timeout=10)
    finally:
        engine.close()
    assert frame is not None and frame.image.shape == (SIZE, SIZE, 3)
    bar = SIZE // 4  # a 2:1 picture in a square: a quarter of the height black above and below
    assert (frame.image[: bar - 1] == 0).all() and (frame.image[-bar + 1 :] == 0).all()
    assert frame.image[bar + 1 : -bar - 1].max() > 0
