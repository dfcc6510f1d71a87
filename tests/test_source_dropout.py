"""Source loss: while the source fails, the engine keeps sending its last output frame, logs the loss once, retries
with backoff and resumes when the source is back (what NDI, camera, Spout and Syphon sources rely on)."""

from __future__ import annotations

import logging
import threading
import time

from conftest import SIZE

from bridges.pattern import PatternSource
from engine.config.schema import Preset
from engine.core.frames import Frame
from engine.live.loop import LiveEngine

FAILURES = 4  # reads that fail in a row: the worker backs off 0.1 + 0.2 + 0.4 + 0.8 s
WAIT_S = 60.0


class FlakySource(PatternSource):
    """A paced pattern whose reads fail FAILURES times in a row once `fail` is set (a sender that went away)."""

    def __init__(self) -> None:
        super().__init__(SIZE, SIZE, fps=30, name="flaky")
        self.fail = threading.Event()
        self.failures = 0

    def read(self) -> Frame:
        if self.fail.is_set() and self.failures < FAILURES:
            self.failures += 1
            raise OSError("sender went away")
        return super().read()


class RecordingSink:
    name = "recording"

    def __init__(self) -> None:
        self.frames: list[tuple[float, Frame]] = []

    def open(self) -> None: ...

    def write(self, frame: Frame) -> None:
        self.frames.append((time.perf_counter(), frame))

    def close(self) -> None: ...


def _wait(condition, what: str) -> None:
    deadline = time.perf_counter() + WAIT_S
    while not condition():
        assert time.perf_counter() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_the_last_frame_keeps_going_out_while_the_source_is_lost(tiny_taesd_models, caplog):
    preset = Preset.model_validate(
        {
            "model": {"id": "tiny", "vae": "tiny-taesd", "dtype": "float32", "device": "cpu"},
            "stream": {"width": SIZE, "height": SIZE, "t_index_list": [16, 32]},
            "io": {"input": "pattern:", "outputs": []},
        }
    )
    engine = LiveEngine(preset, models=tiny_taesd_models)
    source, sink = FlakySource(), RecordingSink()
    engine.start_io(source=source, sinks=[sink])
    done = threading.Event()

    def loop() -> None:  # run()'s loop, on the bridges given above
        while not done.is_set():
            engine.apply_pending_controls()
            engine.step()

    runner = threading.Thread(target=loop, daemon=True)
    with caplog.at_level(logging.INFO, logger="engine.live.io_threads"):
        runner.start()
        try:
            _wait(lambda: engine.frame_number > 3, "the first output frames")
            source.fail.set()
            worker = engine.source_worker
            _wait(lambda: worker.failing, "the source to fail")
            lost_at = time.perf_counter() + 0.3  # a frame taken just before the failure may still be processed
            _wait(lambda: not worker.failing, "the source to come back")
            back_at = time.perf_counter()
            produced = engine.frame_number
            _wait(lambda: engine.frame_number > produced + 3, "new output frames")
        finally:
            done.set()
            runner.join(timeout=30)
            engine.close()
    held = [frame for when, frame in sink.frames if lost_at < when < back_at]
    assert len(held) >= 3  # ~10 a second while the source is away (the 0.1 s input wait)
    last_output = held[0]
    assert all(frame.index == last_output.index for frame in held)
    assert worker.restarts == FAILURES and source.failures == FAILURES
    lost = [r for r in caplog.records if "read failed (OSError: sender went away)" in r.getMessage()]
    assert len(lost) == 1  # one line for the whole outage
    assert f"source flaky: recovered after {FAILURES} error(s)" in caplog.text
    assert sink.frames[-1][1].index > last_output.index  # fresh frames again
