"""Bridge workers: a slow sink drops instead of lagging, a failing sink is retried (logged once per streak)
without disturbing a healthy one, and stop() closes the bridge so files are complete."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from bridges.clip_io import ClipWriter
from bridges.file import FileSink, FileSource
from bridges.pattern import PatternSource, pattern_image
from engine.core.errors import DreamwireError
from engine.core.frames import Frame
from engine.core.slot import LatestFrameSlot
from engine.core.supervisor import Supervisor
from engine.live.io_threads import SinkWorker, SourceWorker

_IMAGE = np.zeros((8, 8, 3), np.uint8)


def _frame(i: int) -> Frame:
    return Frame(image=_IMAGE, index=i, capture_time=time.perf_counter())


class RecordingSink:
    """Test sink: optional delay per write, a failure every `fail_every` writes, `open_failures` failed opens."""

    def __init__(self, name="rec", delay=0.0, fail_every=0, open_failures=0):
        self.name = name
        self.delay, self.fail_every, self.open_failures = delay, fail_every, open_failures
        self.received: list[int] = []
        self.writes = self.opens = self.closes = 0
        self.got = threading.Condition()

    def open(self):
        self.opens += 1
        if self.opens <= self.open_failures:
            raise OSError(f"device busy (attempt {self.opens})")

    def write(self, frame):
        self.writes += 1
        if self.fail_every and self.writes % self.fail_every == 0:
            raise RuntimeError("connection lost\nsecond line that must not be logged")
        time.sleep(self.delay)
        with self.got:
            self.received.append(frame.index)
            self.got.notify_all()

    def close(self):
        self.closes += 1

    def wait_for(self, index, timeout=2.0):
        """Wait until frame `index` (or a newer one: a failed write loses its frame) was received."""
        with self.got:
            return self.got.wait_for(lambda: bool(self.received) and self.received[-1] >= index, timeout)


def _warnings(caplog, needle):
    return [r for r in caplog.records if r.levelno == logging.WARNING and needle in r.getMessage()]


def test_slow_sink_gets_the_newest_frame_and_drops_the_rest():
    slot: LatestFrameSlot[Frame] = LatestFrameSlot()
    sink = RecordingSink(delay=0.05)
    worker = SinkWorker(sink, slot)
    worker.start()
    for i in range(100):
        slot.put(_frame(i))
        time.sleep(0.001)
    last_put = time.perf_counter()
    assert sink.wait_for(99, timeout=2.0)
    lag = time.perf_counter() - last_put
    worker.stop()
    assert sink.received[-1] == 99
    assert len(sink.received) < 50  # ~2 ms of puts per 50 ms write: most frames are dropped, not queued
    assert len(sink.received) + slot.dropped == 100  # every frame was either written or counted as dropped
    assert sink.received == sorted(sink.received)
    assert lag < 1.0  # at most about one write behind, not 100 x 50 ms = 5 s (loose for a loaded machine)


def test_failing_sink_is_retried_logged_once_per_streak_and_healthy_sink_unaffected(caplog):
    caplog.set_level(logging.INFO, logger="engine.live.io_threads")
    flaky_slot: LatestFrameSlot[Frame] = LatestFrameSlot()
    busy_slot: LatestFrameSlot[Frame] = LatestFrameSlot()
    healthy_slot: LatestFrameSlot[Frame] = LatestFrameSlot()
    flaky, busy, healthy = RecordingSink("flaky", fail_every=3), RecordingSink("busy", open_failures=2), RecordingSink()
    workers = [
        SinkWorker(flaky, flaky_slot, backoff_start=0.005),
        SinkWorker(busy, busy_slot, backoff_start=0.005),
        SinkWorker(healthy, healthy_slot, backoff_start=0.005),
    ]
    for w in workers:
        w.start()
    for i in range(60):
        for slot in (flaky_slot, busy_slot, healthy_slot):
            slot.put(_frame(i))
        assert healthy.wait_for(i, timeout=1.0)  # the healthy sink never waits on the failing ones
        assert healthy.received[-1] == i
        time.sleep(0.003)
    assert flaky.wait_for(57) and busy.wait_for(59)  # both keep receiving up to the newest frames
    for w in workers:
        assert w.stop(timeout=1.0)
    flaky_worker, busy_worker, healthy_worker = workers

    assert healthy.received == list(range(60))
    assert healthy_worker.errors == 0 and healthy_worker.restarts == 0

    # every 3rd write fails, then a write succeeds: each failure is its own streak, logged once, re-opened
    assert flaky_worker.errors >= 5
    assert flaky_worker.restarts in (flaky_worker.errors - 1, flaky_worker.errors)  # stop() may cut the last one
    assert flaky.opens == flaky_worker.restarts + 1
    flaky_logs = _warnings(caplog, "sink flaky: write failed")
    assert len(flaky_logs) == flaky_worker.errors
    assert "RuntimeError: connection lost" in flaky_logs[0].getMessage()
    assert "second line" not in caplog.text

    # two failed opens in a row are one streak: one warning, then frames flow
    assert busy_worker.errors == 2 and busy_worker.restarts == 2 and busy.opens == 3
    assert len(_warnings(caplog, "sink busy: open failed")) == 1
    assert "sink busy: recovered after 2 error(s)" in caplog.text
    assert len(busy.received) >= 10
    assert not busy_worker.failing


def test_stop_interrupts_backoff_and_closes():
    sink = RecordingSink(open_failures=10**6)
    worker = SinkWorker(sink, LatestFrameSlot(), backoff_start=30.0)
    worker.start()
    deadline = time.perf_counter() + 30.0
    while sink.closes < 1:  # the failed open is closed just before the backoff: wait for that, not a fixed time
        assert time.perf_counter() < deadline, "the worker never tried to open the sink"
        time.sleep(0.002)
    start = time.perf_counter()
    assert worker.stop(timeout=1.0)
    assert time.perf_counter() - start < 1.0  # the 30 s backoff was interrupted
    assert not worker.alive and sink.closes >= 1


def test_stop_closes_a_file_sink_and_writes_the_last_frame(tmp_path):
    path = tmp_path / "out.npy"
    slot: LatestFrameSlot[Frame] = LatestFrameSlot()
    worker = SinkWorker(FileSink(path, fps=10), slot)
    worker.start()
    deadline = time.perf_counter() + 2.0
    for i in range(4):
        slot.put(Frame(pattern_image(i, 16, 16), i, 0.0))
        while worker.frames <= i and time.perf_counter() < deadline:
            time.sleep(0.002)
    slot.put(Frame(pattern_image(4, 16, 16), 4, 0.0))  # may still be in the slot when stop() comes
    assert worker.stop(timeout=2.0)
    stored = np.load(path)  # complete and renamed into place only by close()
    assert stored.shape == (5, 16, 16, 3)
    np.testing.assert_allclose(stored[-1], pattern_image(4, 16, 16) / 255.0, atol=1e-6)


def _read_until(slot: LatestFrameSlot[Frame], done: Callable[[], bool], timeout: float = 5.0) -> list[Frame]:
    """Take frames from `slot` as the engine does until done() (or the timeout): an unpaced source makes a frame
    each time its last one is read."""
    taken: list[Frame] = []
    deadline = time.perf_counter() + timeout
    while not done() and time.perf_counter() < deadline:
        frame = slot.get(timeout=0.05)
        if frame is not None:
            taken.append(frame)
    return taken


def test_source_worker_reads_a_clip_to_the_end(tmp_path):
    path = tmp_path / "clip.npy"
    with ClipWriter(path) as writer:
        for i in range(5):
            writer.write(pattern_image(i, 16, 16))
    slot: LatestFrameSlot[Frame] = LatestFrameSlot()
    worker = SourceWorker(FileSource(path), slot)
    worker.start()
    taken = _read_until(slot, worker.finished.is_set)
    assert worker.finished.is_set()
    assert worker.stop(timeout=1.0)
    # Unpaced, the clip goes at its reader's pace: every frame in order, none dropped (it used to be read through
    # at once, spinning a core, and the reader saw only the newest).
    assert [frame.index for frame in taken] == [0, 1, 2, 3, 4] and slot.dropped == 0
    assert np.array_equal(taken[-1].image, pattern_image(4, 16, 16))


def test_an_unpaced_source_makes_a_frame_per_read_for_either_kind_of_reader():
    # The engine takes with get(): every frame made is taken, none dropped, at most one made ahead.
    slot: LatestFrameSlot[Frame] = LatestFrameSlot()
    worker = SourceWorker(PatternSource(width=8, height=8, fps=0), slot, supervisor=Supervisor())
    worker.start()
    taken = _read_until(slot, lambda: worker.frames >= 30)
    assert worker.stop(timeout=1.0)
    assert len(taken) >= 29 and worker.frames <= len(taken) + 1 and slot.dropped == 0
    # The ControlNet and image-prompt sources' readers keep their own mark (wait_newer, latest): each look lets
    # the next frame be made, so those sources go on too, one frame per look.
    slot = LatestFrameSlot()
    worker = SourceWorker(PatternSource(width=8, height=8, fps=0), slot, supervisor=Supervisor())
    worker.start()
    seen = 0
    for _ in range(10):
        newer = slot.wait_newer(seen, timeout=5.0)
        assert newer is not None and newer[0] == seen + 1 and worker.frames <= newer[0] + 1
        seen = newer[0]
    assert worker.stop(timeout=1.0)


class FlakySource(PatternSource):
    def __init__(self):
        super().__init__(width=8, height=8, fps=0, name="flaky-pattern")
        self.reads = 0

    def read(self):
        self.reads += 1
        if self.reads == 3:
            raise OSError("camera unplugged")
        return super().read()


def test_source_worker_recovers_from_a_read_error(caplog):
    slot: LatestFrameSlot[Frame] = LatestFrameSlot()
    worker = SourceWorker(FlakySource(), slot, backoff_start=0.005)
    worker.start()
    _read_until(slot, lambda: worker.frames >= 20, timeout=2.0)
    assert worker.stop(timeout=1.0)
    assert worker.frames >= 20 and worker.errors == 1 and worker.restarts == 1
    assert len(_warnings(caplog, "source flaky-pattern: read failed (OSError: camera unplugged)")) == 1
    assert not worker.finished.is_set()


class _Unprintable(OSError):
    """An exception from a bridge's library whose message cannot be built: logging it is the worker's own bug."""

    def __str__(self) -> str:
        raise RuntimeError("the error's message could not be formatted")


class BuggySource(PatternSource):
    def __init__(self):
        super().__init__(width=8, height=8, fps=0, name="buggy-pattern")
        self.reads = 0

    def read(self):
        self.reads += 1
        if self.reads == 3:
            raise _Unprintable()
        return super().read()


def test_a_worker_thread_that_dies_is_logged_restarted_and_counted(caplog):
    supervisor = Supervisor()
    slot: LatestFrameSlot[Frame] = LatestFrameSlot()
    worker = SourceWorker(BuggySource(), slot, backoff_start=0.005, supervisor=supervisor)
    with caplog.at_level(logging.DEBUG, logger="engine.core.supervisor"):
        worker.start()
        _read_until(slot, lambda: worker.frames >= 20)
        snapshot = supervisor.snapshot()
        assert worker.alive
        assert worker.stop(timeout=1.0)
    assert worker.frames >= 20  # restarted: frames flow again
    assert snapshot["thread_deaths"] == 1 and snapshot["thread_restarts"] == 1 and worker.thread_deaths == 1
    cause = "RuntimeError: the error's message could not be formatted"
    assert snapshot["last_thread_error"] == f"dreamwire-source-buggy-pattern: {cause}"
    deaths = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(deaths) == 1 and deaths[0].exc_info is not None  # through logging, with its traceback
    assert f"thread dreamwire-source-buggy-pattern died: {cause} (restarting with backoff)" in deaths[0].getMessage()


class _NoCamera(PatternSource):
    def __init__(self):
        super().__init__(width=8, height=8, fps=0, name="camera:9")

    def open(self):
        raise DreamwireError("camera 9 could not be opened; no camera found")


def test_source_state_names_why_there_is_no_picture():
    slot: LatestFrameSlot[Frame] = LatestFrameSlot()
    worker = SourceWorker(_NoCamera(), slot, backoff_start=0.005, supervisor=Supervisor())
    assert worker.state == "waiting for camera:9"
    worker.start()
    deadline = time.perf_counter() + 2.0
    while worker.errors < 2 and time.perf_counter() < deadline:
        time.sleep(0.005)
    assert worker.stop(timeout=1.0)
    assert worker.state == "waiting for camera:9: camera 9 could not be opened; no camera found"
    healthy = SourceWorker(FlakySource(), slot, backoff_start=0.005, supervisor=Supervisor())
    healthy.start()
    _read_until(slot, lambda: healthy.frames >= 5, timeout=2.0)  # its 3rd read fails, then it recovers
    assert healthy.state == "ok" and healthy.errors == 1
    assert healthy.stop(timeout=1.0)


def test_source_worker_stamps_frames_on_its_own_thread():
    slot: LatestFrameSlot[Frame] = LatestFrameSlot()
    stamps: list[tuple[float, str]] = []
    worker = SourceWorker(
        PatternSource(width=8, height=8, fps=50),
        slot,
        on_frame=lambda stamp: stamps.append((stamp, threading.current_thread().name)),
        supervisor=Supervisor(),
    )
    worker.start()
    deadline = time.perf_counter() + 5.0
    while len(stamps) < 10 and time.perf_counter() < deadline:
        time.sleep(0.01)
    assert worker.stop(timeout=1.0)
    assert len(stamps) >= 10 and {name for _, name in stamps} == {"dreamwire-source-pattern"}
    times = [stamp for stamp, _ in stamps]
    assert times == sorted(times) and times[-1] - times[0] >= 0.9 * (len(times) - 1) / 50  # paced: as produced


def _write_through(worker: SinkWorker, slot: LatestFrameSlot[Frame], images: list[np.ndarray]) -> None:
    """Hand the worker one frame at a time, each once it has taken the last (written or failed)."""
    deadline = time.perf_counter() + 10.0
    for i, image in enumerate(images):
        done = worker.frames + worker.errors
        slot.put(Frame(image, i, 0.0))
        while worker.frames + worker.errors <= done:
            assert time.perf_counter() < deadline
            time.sleep(0.002)


def test_a_recording_scales_frames_of_another_size_to_the_file(tmp_path, caplog):
    path = tmp_path / "take1.npy"
    slot: LatestFrameSlot[Frame] = LatestFrameSlot()
    worker = SinkWorker(FileSink(path), slot, backoff_start=0.01)
    worker.start()
    big = [pattern_image(i, 32, 32) for i in range(2, 5)]  # a live stream.width change: 16 → 32
    _write_through(worker, slot, [pattern_image(0, 16, 16), pattern_image(1, 16, 16), *big])
    assert worker.stop(timeout=2.0)
    stored = np.load(path)
    assert stored.shape == (5, 16, 16, 3)  # nothing lost, nothing started over
    assert worker.errors == 0
    assert sum("scaling them to the file's 16x16" in r.getMessage() for r in caplog.records) == 1  # once per size


def test_a_recording_reopened_after_a_write_error_goes_on_in_the_next_file(tmp_path, caplog):
    path = tmp_path / "take1.npy"
    slot: LatestFrameSlot[Frame] = LatestFrameSlot()
    worker = SinkWorker(FileSink(path), slot, backoff_start=0.01)
    worker.start()
    broken = pattern_image(3, 16, 16).astype(np.float16)  # ClipWriter refuses float16: a write error
    images = [pattern_image(i, 16, 16) for i in range(3)] + [broken] + [pattern_image(i, 16, 16) for i in (4, 5)]
    _write_through(worker, slot, images)
    assert worker.stop(timeout=2.0)
    assert worker.errors == 1
    assert np.load(path).shape == (3, 16, 16, 3)  # the first file keeps its frames
    assert np.load(tmp_path / "take1-2.npy").shape == (2, 16, 16, 3)  # and the recording goes on
    assert any("take1.npy is finished; the recording goes on in" in r.getMessage() for r in caplog.records)
