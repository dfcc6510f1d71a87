"""ndi: bridge end to end on loopback: a cyndilib sender → the engine (tiny model, ndi: in and out) → a cyndilib
receiver; the sender stops and comes back. NDI compresses (lossy), so frames are compared with a tolerance."""

from __future__ import annotations

import threading
import time
import uuid
from fractions import Fraction

import numpy as np
import pytest
from conftest import SIZE

from bridges.ndi import NdiSink, NdiSource, matching_source
from bridges.pattern import pattern_image
from bridges.pixels import rgb_to_rgba, rgba_to_rgb
from bridges.uri import open_sink, open_source
from engine.config.schema import Preset
from engine.core.frames import Frame
from engine.core.instance import instance
from engine.live.loop import LiveEngine

ndi = pytest.importorskip("cyndilib", reason="cyndilib (the ndi extra) has no wheel for this platform")
from cyndilib.wrapper.ndi_recv import RecvBandwidth, RecvColorFormat  # noqa: E402

WAIT_S = 60.0  # generous: a loaded CI machine runs the tiny model slowly; nothing waits this long when it works


class PatternSender:
    """A cyndilib Sender on its own thread, sending `image` at 30 fps until stopped."""

    def __init__(self, name: str, image: np.ndarray) -> None:
        self.name, self.rgba = name, rgb_to_rgba(image)
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        video = ndi.VideoSendFrame()
        video.set_resolution(self.rgba.shape[1], self.rgba.shape[0])
        video.set_frame_rate(Fraction(30))
        video.set_fourcc(ndi.FourCC.RGBA)
        sender = ndi.Sender(self.name, clock_video=False)
        sender.set_video_frame(video)
        with sender:
            while not self._stop.wait(1 / 30):
                sender.write_video(self.rgba.reshape(-1))
                self.sent += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class FrameReceiver:
    """A cyndilib Finder + Receiver on its own thread, keeping every frame of source `name` with its arrival time."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.frames: list[tuple[float, np.ndarray]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # Polled, as bridges/ndi.py does and for its reasons (cyndilib holds the GIL while it waits).
        finder, found = ndi.Finder(), None
        while found is None and not self._stop.wait(0.05):
            found = matching_source(finder.update_sources(), self.name)
        if found is None:
            return
        receiver = ndi.Receiver(color_format=RecvColorFormat.RGBX_RGBA, bandwidth=RecvBandwidth.highest)
        video = ndi.VideoFrameSync()
        receiver.frame_sync.set_video_frame(video)
        receiver.set_source(finder.get_source(found))
        stamp = 0.0
        while not self._stop.wait(0.002):
            receiver.frame_sync.capture_video()
            if video.xres and video.get_timestamp_posix() != stamp:
                stamp = video.get_timestamp_posix()
                image = rgba_to_rgb(video.get_array().reshape(video.yres, video.xres, 4))
                self.frames.append((time.perf_counter(), image))
        receiver.disconnect()

    def wait_for(self, count: int, after: float = 0.0) -> list[np.ndarray]:
        deadline = time.perf_counter() + WAIT_S
        while time.perf_counter() < deadline:
            got = [image for when, image in self.frames if when > after]
            if len(got) >= count:
                return got
            time.sleep(0.05)
        raise AssertionError(f"receiver got {len(self.frames)} frames, wanted {count} after t={after:.2f}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _wait(condition, what: str) -> None:
    deadline = time.perf_counter() + WAIT_S
    while not condition():
        assert time.perf_counter() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _preset(source: str, output: str) -> Preset:
    return Preset.model_validate(
        {
            "model": {"id": "tiny", "vae": "tiny-taesd", "dtype": "float32", "device": "cpu"},
            "stream": {"width": SIZE, "height": SIZE, "t_index_list": [16, 32]},
            "io": {"input": f"ndi:{source}?timeout=0.5", "outputs": [f"ndi:{output}"]},
        }
    )


def test_engine_takes_ndi_in_and_sends_ndi_out_through_a_sender_dropout(tiny_taesd_models):
    tag = uuid.uuid4().hex[:8]
    source_name, output_name = f"dwtest-in-{tag}", f"dwtest-out-{tag}"
    image = pattern_image(0, SIZE, SIZE)  # static: after warm-up the engine's output is the same every frame
    sender = PatternSender(source_name, image)
    engine = LiveEngine(_preset(source_name, output_name), models=tiny_taesd_models)
    runner = threading.Thread(target=engine.run, kwargs={"duration": 4 * WAIT_S}, daemon=True)
    receiver = FrameReceiver(output_name)
    runner.start()
    try:
        received = receiver.wait_for(5)
        assert all(frame.shape == (SIZE, SIZE, 3) for frame in received)
        _wait(lambda: engine.frame_number > 4, "the engine's warm-up")
        output = engine.io.last_outputs[0].image.astype(int)  # constant from here on (static input)
        latest = receiver.wait_for(3, after=time.perf_counter())[-1].astype(int)
        error = np.abs(latest - output).mean()
        unrelated = np.abs(latest - output[::-1, ::-1]).mean()
        print(
            f"NDI round trip: mean |received - engine output| {error:.1f}, against an unrelated image {unrelated:.1f}"
        )
        assert error < 12 and error < unrelated / 3

        worker = engine.source_worker
        sender.stop()  # the sender disappears ...
        _wait(lambda: worker.failing, "the engine to notice the lost sender")
        lost_at = time.perf_counter()
        held = receiver.wait_for(3, after=lost_at)  # ... and the last output frame keeps going out
        assert np.abs(held[-1].astype(int) - output).mean() < 12
        frames_before = worker.frames
        sender = PatternSender(source_name, image)  # ... and comes back
        _wait(lambda: not worker.failing and worker.frames > frames_before + 3, "the engine to resume")
        assert worker.restarts >= 1 and engine.source_worker is worker
    finally:
        engine.stop()
        runner.join(timeout=30)
        receiver.stop()
        sender.stop()
    assert not runner.is_alive()


def test_ndi_sink_and_source_round_trip_in_each_pixel_format():
    tag = uuid.uuid4().hex[:8]
    image = np.zeros((48, 64, 3), np.uint8)
    image[:, :32] = (200, 40, 30)
    image[:, 32:] = (20, 160, 220)
    for fmt in ("rgba", "bgra", "uyvy"):
        sink, source = NdiSink(f"dwtest-{fmt}-{tag}", fmt=fmt), NdiSource(f"dwtest-{fmt}-{tag}", timeout=5.0)
        sink.open()
        stop = threading.Event()

        def pump(sink: NdiSink = sink, stop: threading.Event = stop) -> None:
            while not stop.wait(1 / 30):
                sink.write(Frame(image, 0, 0.0))

        thread = threading.Thread(target=pump, daemon=True)
        thread.start()
        try:
            source.open()
            frame = source.read()
        finally:
            stop.set()
            thread.join()
            source.close()
            sink.close()
        away_from_the_edge = np.r_[0:28, 36:64]
        error = np.abs(frame.image.astype(int) - image)[:, away_from_the_edge].max()
        assert frame.image.shape == (48, 64, 3) and error <= 12, (fmt, error)


def test_a_missing_ndi_source_is_named_with_what_was_found():
    source = NdiSource(f"dwtest-nobody-{uuid.uuid4().hex[:8]}", timeout=0.3)
    with pytest.raises(Exception, match=r"ndi: no source named 'dwtest-nobody-\w+' found in 0.3 s \(found: "):
        source.open()
    source.close()


def test_ndi_uri_names_and_options():
    stage = instance("stage")
    assert open_sink("ndi:", stage).name == "ndi:stage"
    assert open_source("ndi:", stage).name == "ndi:stage-in"
    assert open_sink("ndi:x?format=uyvy&fps=50").fmt == "uyvy"
    assert matching_source(["BOX (dreamwire)", "BOX (other)"], "dreamwire") == "BOX (dreamwire)"
    assert matching_source(["BOX (dreamwire)"], "BOX (dreamwire)") == "BOX (dreamwire)"
    assert matching_source(["BOX (dreamwire-in)"], "dreamwire") is None
