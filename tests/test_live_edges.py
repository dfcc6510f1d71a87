"""The live engine's edges (issue 14): fps_in from stamps taken where the source produces frames, bridge threads
under the supervisor, no brown warm-up frames in live mode, and a placeholder frame naming why there is no
picture yet."""

from __future__ import annotations

import logging
import queue
import threading
import time

import numpy as np
import pytest
from conftest import SIZE, clip

from bridges.pattern import PatternSource
from engine.core.errors import DreamwireError
from engine.core.frames import Frame


class CollectingSink:
    """Keeps every frame it is given, and wakes waiters."""

    name = "collect"

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self._got = threading.Condition()

    def open(self) -> None:
        pass

    def write(self, frame: Frame) -> None:
        with self._got:
            self.frames.append(frame)
            self._got.notify_all()

    def close(self) -> None:
        pass

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Frame]:
        with self._got:
            assert self._got.wait_for(lambda: len(self.frames) >= count, timeout), f"{len(self.frames)} < {count}"
            return list(self.frames)


class FedSource:
    """A source the test hands frames to, one at a time (as a capture card would, at the test's pace)."""

    name = "fed"

    def __init__(self) -> None:
        self._frames: queue.SimpleQueue[Frame | None] = queue.SimpleQueue()

    def feed(self, frame: Frame | None) -> None:
        self._frames.put(frame)

    def open(self) -> None:
        pass

    def read(self) -> Frame | None:
        return self._frames.get()

    def close(self) -> None:
        pass


# ---- fps_in ---------------------------------------------------------------------------------------------------


def test_fps_in_is_the_source_rate_with_a_slow_engine_and_after_a_stall(engine):
    """A 30 fps source and an engine at about 5 fps: fps_in says 30 (within 10%), also just after the engine
    stalled for 1.5 s (the old count stamped every frame with the moment the engine took one: 34 fps, and
    millions after a stall)."""
    live = engine()
    source = PatternSource(width=SIZE, height=SIZE, fps=30.0, name="paced-pattern")
    live.start_io(source=source, sinks=[])
    try:
        started = time.perf_counter()
        while time.perf_counter() - started < 2.5:  # fill the 2 s window
            live.apply_pending_controls()
            live.step()
            time.sleep(0.15)
        steady = live.status()["fps_in"]
        time.sleep(1.5)  # the engine stalls (a long rebuild swap, a GC pause, a loaded machine)
        live.apply_pending_controls()
        live.step()
        after_stall = live.status()["fps_in"]
    finally:
        live.close()
    assert steady == pytest.approx(30.0, rel=0.10)
    assert after_stall == pytest.approx(30.0, rel=0.10)


# ---- bridge threads under the supervisor ----------------------------------------------------------------------


class _Unprintable(OSError):
    """An error from a bridge's library whose message cannot be built: logging it is a bug in the worker."""

    def __str__(self) -> str:
        raise RuntimeError("the error's message could not be formatted")


class BuggySource(PatternSource):
    def __init__(self) -> None:
        super().__init__(width=SIZE, height=SIZE, fps=0, name="buggy")
        self.reads = 0

    def read(self) -> Frame | None:
        self.reads += 1
        if self.reads == 2:
            raise _Unprintable()
        return super().read()


def test_a_source_thread_that_dies_is_logged_restarted_and_counted_in_status(engine, caplog):
    live = engine()
    before = live.status()
    with caplog.at_level(logging.ERROR, logger="engine.core.supervisor"):
        live.start_io(source=BuggySource(), sinks=[])
        deadline = time.perf_counter() + 10.0
        while live.status()["thread_restarts"] <= before["thread_restarts"]:
            assert time.perf_counter() < deadline, "the source thread was not restarted"
            live.step()  # the engine reads on: an unpaced source reads its next frame once the last one was taken
        assert live.step()  # frames come again
        status = live.status()
        live.close()
    assert status["thread_deaths"] == before["thread_deaths"] + 1
    assert (
        status["last_thread_error"]
        == "dreamwire-source-buggy: RuntimeError: the error's message could not be formatted"
    )
    deaths = [r for r in caplog.records if "thread dreamwire-source-buggy died" in r.getMessage()]
    assert len(deaths) == 1 and deaths[0].exc_info is not None


# ---- no brown warm-up frames ----------------------------------------------------------------------------------


def test_live_outputs_hold_the_last_good_frame_through_the_warm_up(engine):
    """Three steps: the first two outputs after a prepare come from the zero latent buffer. Live, the input frame
    (at start) or the frame shown before (after a reset, after a rebuild) goes out instead, and the first real
    output goes out unchanged. `twin` runs the same frames through process(): render's frame-exact order."""
    steps = [10, 25, 40]
    live, twin = engine(t_index_list=steps), engine(t_index_list=steps)
    source, sink = FedSource(), CollectingSink()
    live.start_io(source=source, sinks=[sink])
    images = clip(40)
    expected: list[np.ndarray] = []  # what process() gives: render's order, warm-up frames included

    def send(k: int, twin_too: bool = True) -> np.ndarray:
        frame = Frame(images[k % len(images)], k, time.perf_counter())  # frames sent while it rebuilds: any number
        source.feed(frame)
        deadline = time.perf_counter() + 10.0
        while not live.step():  # the source thread had not put it in the slot yet (a loaded machine)
            assert time.perf_counter() < deadline, f"frame {k} never reached the engine"
        if twin_too:
            expected.append(twin.process([Frame(images[k], k, frame.capture_time)])[0].image)
        return sink.wait_for(k + 1)[k].image

    start = [send(k) for k in range(3)]
    assert np.array_equal(start[0], images[0]) and np.array_equal(start[1], images[0])  # the input frame, held
    assert not np.array_equal(expected[0], images[0])  # (what would have gone out: the zero buffer's decode)
    assert np.array_equal(start[2], expected[2])  # the first real output, unchanged

    shown = start[2]
    live.reset(), twin.reset()
    live.apply_pending_controls(), twin.apply_pending_controls()
    after_reset = [send(k) for k in range(3, 6)]
    assert np.array_equal(after_reset[0], shown) and np.array_equal(after_reset[1], shown)
    assert not np.array_equal(expected[3], shown)  # a brown flash without the hold
    assert np.array_equal(after_reset[2], expected[5])

    shown = after_reset[2]
    live.set("stream.do_add_noise", False)  # a rebuild key: a new pipeline with an empty buffer
    k, deadline = 6, time.perf_counter() + 30.0
    live.apply_pending_controls()
    while live.status()["rebuilding"]:
        assert time.perf_counter() < deadline, "the rebuild did not finish"
        assert np.array_equal(send(k, twin_too=False), shown)  # held while it builds
        live.apply_pending_controls()
        k += 1
    after_rebuild = [send(k + i, twin_too=False) for i in range(3)]
    assert np.array_equal(after_rebuild[0], shown) and np.array_equal(after_rebuild[1], shown)
    assert not np.array_equal(after_rebuild[2], shown)  # the new pipeline's first real output
    source.feed(None)
    live.close()


# ---- a placeholder naming why there is no picture -------------------------------------------------------------


class MissingCamera:
    """A camera that is not there; from its third try, another reason (the device is found but busy)."""

    name = "camera:9"

    def __init__(self) -> None:
        self.opens = 0

    def open(self) -> None:
        self.opens += 1
        raise DreamwireError(
            "camera 9 could not be opened; no camera found" if self.opens < 3 else "camera 9 is busy (another program)"
        )

    def read(self) -> Frame | None:
        raise AssertionError("never opened")

    def close(self) -> None:
        pass


def test_a_source_without_frames_sends_a_placeholder_naming_the_reason(engine):
    live = engine()
    sink = CollectingSink()
    live.start_io(source=MissingCamera(), sinks=[sink])
    deadline = time.perf_counter() + 10.0
    while len(sink.frames) < 2:
        assert time.perf_counter() < deadline, f"{len(sink.frames)} placeholder(s) sent"
        live.apply_pending_controls()
        assert not live.step()  # no input frame
    for _ in range(3):  # the reason stays: nothing new is sent
        live.step()
    status = live.status()
    live.close()
    first, second = sink.frames[0].image, sink.frames[1].image
    assert len(sink.frames) == 2
    assert first.shape == second.shape == (SIZE, SIZE, 3) and first.dtype == np.uint8
    assert len(np.unique(first.reshape(-1, 3), axis=0)) > 1  # text on it, not a blank
    assert not np.array_equal(first, second)  # a new reason, a new picture
    assert status["source"] == "waiting for camera:9: camera 9 is busy (another program)"
