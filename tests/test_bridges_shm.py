"""shm: bridge: frames cross to and from another process whole, the seqlock never hands out a torn frame, and the
segment is removed when its writer closes."""

from __future__ import annotations

import logging
import os
import struct
import subprocess
import sys
import threading
import time
import uuid
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import pytest

from bridges import shm
from bridges.shm import ShmReader, ShmSink, ShmSource, ShmWriter
from bridges.uri import open_sink, open_source
from engine.core.errors import DreamwireError
from engine.core.frames import Frame
from engine.core.instance import instance

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from shm_reader import FrameReader, HeaderNotReady  # noqa: E402  # the numpy-only reader (TouchDesigner's too)
from shm_writer import gradient  # noqa: E402  # the example's frames: every pixel of frame i is known

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _name() -> str:
    return f"dwt-{uuid.uuid4().hex[:10]}"


def _index_of(image: np.ndarray) -> int:
    """The gradient() frame index of `image` (its top-left red value), after checking every pixel matches."""
    index = int(image[0, 0, 0])
    np.testing.assert_array_equal(image, gradient(index, image.shape[1], image.shape[0]))
    return index


def _segment_exists(name: str) -> bool:
    try:
        segment = shm.attach(name)
    except DreamwireError:
        return False
    segment.close()
    return True


def _wait_for_segment(name: str, timeout: float = 30.0) -> None:
    """Until the segment exists: deliberately not until its header is published, so that the readers under test
    meet a segment that is still being created, as a reader started with its writer does."""
    deadline = time.perf_counter() + timeout
    while not _segment_exists(name):
        assert time.perf_counter() < deadline, f"segment {name} never appeared"
        time.sleep(0.05)


def test_frames_reach_a_reader_in_another_process(tmp_path):
    name, out = _name(), tmp_path / "read.npy"
    sink = ShmSink(name)
    sink.open()
    stop = threading.Event()

    def write() -> None:
        index = 0
        while not stop.is_set():
            sink.write(Frame(gradient(index, 40, 30), index, 0.0))
            index += 1
            time.sleep(0.005)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        _wait_for_segment(name)
        reader = [sys.executable, str(ROOT / "examples" / "shm_reader.py"), name, "--frames", "5", "--save", str(out)]
        done = subprocess.run(reader, capture_output=True, text=True, timeout=60, check=False, env=ENV)
    finally:
        stop.set()
        writer.join()
        sink.close()
    assert done.returncode == 0, done.stderr[-2000:]
    frames = np.load(out)
    assert frames.shape == (5, 30, 40, 3)
    indices = [_index_of(frame) for frame in frames]
    assert indices == sorted(indices) and len(set(indices)) == 5  # each frame once, in order
    assert not _segment_exists(name)  # the writer's close removed it


def test_frames_from_a_writer_in_another_process_and_its_segment_goes_with_it():
    name = _name()
    command = [sys.executable, str(ROOT / "examples" / "shm_writer.py"), name, "--size", "64x48", "--fps", "100"]
    writer = subprocess.Popen([*command, "--frames", "300"], env=ENV, stdout=subprocess.PIPE, text=True)
    source = ShmSource(name, timeout=5.0)
    try:
        _wait_for_segment(name)
        source.open()
        frames = [source.read() for _ in range(5)]
        indices = [_index_of(frame.image) for frame in frames]
        assert indices == sorted(indices) and len(set(indices)) == 5
        assert [frame.index for frame in frames] == [0, 1, 2, 3, 4]
        assert writer.wait(timeout=60) == 0
        with pytest.raises(shm.ShmClosed, match="closed it"):
            source.read()
        assert not _segment_exists(name)
    finally:
        source.close()
        writer.kill()
        writer.wait()


_HAMMER = """
import sys, time
import numpy as np
from bridges.shm import ShmWriter
name, seconds = sys.argv[1], float(sys.argv[2])
frames = [np.full((512, 512, 3), 0, np.uint8) + np.arange(512, dtype=np.uint8)[:, None, None] * 0 + k for k in range(8)]
for k, frame in enumerate(frames):
    frame[k * 64 : (k + 1) * 64] = 255 - k  # each frame differs in values and in which rows stand out
writer = ShmWriter(name, 512, 512)
end = time.perf_counter() + seconds
while time.perf_counter() < end:
    writer.write(frames[writer.frames % 8])
print(writer.frames)
writer.close()
"""


def _hammer_frame(k: int) -> np.ndarray:
    frame = np.full((512, 512, 3), k, np.uint8)
    frame[k * 64 : (k + 1) * 64] = 255 - k
    return frame


def test_no_torn_frames_while_reading_as_fast_as_possible():
    """A writer process rewrites 512x512 frames at memory speed; every copy the reader keeps is one whole frame."""
    name = _name()
    writer = subprocess.Popen(
        [sys.executable, "-c", _HAMMER, name, "4"], env=ENV, stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    expected = [_hammer_frame(k) for k in range(8)]
    try:
        _wait_for_segment(name)
        reader = ShmReader(name)
        reads, numbers, bad = 0, set(), 0
        deadline = time.perf_counter() + 2.5
        try:
            while time.perf_counter() < deadline:
                got = reader.read_new(0)  # the newest frame, every time: as many copies as we can make
                if got is None:
                    continue
                n, image = got
                reads += 1
                numbers.add(n)
                bad += not np.array_equal(image, expected[(n - 1) % 8])  # frame n was frames[(n - 1) % 8]
        except shm.ShmClosed:
            pass  # the writer finished early on a fast machine
        finally:
            reader.close()
    finally:
        written = int(writer.communicate(timeout=60)[0])
    print(f"{reads} reads of {len(numbers)} distinct frames ({written} written); {reader.torn} laps retried")
    assert bad == 0
    assert reads > 100 and len(numbers) > 50


def test_a_reader_lapped_by_the_writer_takes_the_newer_frame():
    """Deterministic seqlock check: the writer writes two frames while the reader copies one."""
    name = _name()
    writer = ShmWriter(name, 8, 4)
    reader = ShmReader(name)
    try:
        writer.write(gradient(0, 8, 4))  # frame 1 in slot 1
        views = reader._views
        real = views.slots

        class Lapping:
            def __init__(self, slot: np.ndarray, laps: list[int]) -> None:
                self.slot, self.laps = slot, laps

            def copy(self) -> np.ndarray:
                image = self.slot.copy()
                if not self.laps:
                    self.laps.append(1)
                    writer.write(gradient(1, 8, 4))  # frame 2, other slot
                    writer.write(gradient(9, 8, 4))  # frame 3, the slot just copied: that copy is stale
                return image

        laps: list[int] = []
        views.slots = [Lapping(real[0], laps), Lapping(real[1], laps)]
        n, image = reader.read_new(0)
        views.slots = real
        assert (n, reader.torn) == (3, 1)
        np.testing.assert_array_equal(image, gradient(9, 8, 4))
    finally:
        reader.close()
        writer.close()


def test_the_sink_recreates_its_segment_when_the_size_changes_and_removes_it_on_close():
    name = _name()
    sink = ShmSink(name, channels=4)
    sink.open()
    sink.write(Frame(gradient(3, 16, 8), 0, 0.0))
    reader = ShmReader(name)
    n, image = reader.read_new(0)
    assert image.shape == (8, 16, 4) and (image[:, :, 3] == 255).all()
    np.testing.assert_array_equal(image[:, :, :3], gradient(3, 16, 8))
    sink.write(Frame(gradient(4, 32, 8), 1, 0.0))
    with pytest.raises(shm.ShmClosed):
        reader.read_new(n)
    reader.close()
    reader = ShmReader(name)
    assert reader.shape == (8, 32, 4)
    reader.close()
    sink.close()
    assert not _segment_exists(name)


def _fake_segment(name: str, pid: int) -> shared_memory.SharedMemory:
    """A segment as a writer `pid` would leave it (created by this process: shm.attach must not untrack it)."""
    segment = shared_memory.SharedMemory(name, create=True, size=64 + 2 * 2 * 2 * 3)
    shm._CREATED.add(name)
    struct.pack_into("<4sHHIIIIII", segment.buf, 0, b"DWSM", 1, 64, 2, 2, 3, 1, shm.LIVE, pid)
    return segment


@pytest.mark.skipif(os.name != "posix", reason="a segment outlives its writer only on POSIX")
def test_a_segment_left_by_a_dead_writer_is_replaced_and_a_live_one_refused():
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    name = _name()
    stale = _fake_segment(name, int(dead.stdout))
    try:
        writer = ShmWriter(name, 4, 4)  # the dead writer's segment is replaced
        writer.write(gradient(0, 4, 4))
        writer.close()
    finally:
        stale.close()
    name = _name()
    live = _fake_segment(name, os.getpid())
    try:
        with pytest.raises(DreamwireError, match=f"segment '{name}' is being written by process {os.getpid()}"):
            ShmWriter(name, 4, 4)
        live.buf[:4] = bytes(4)  # a live writer that has not published its magic yet is refused too
        with pytest.raises(DreamwireError, match=f"segment '{name}' is being written by process {os.getpid()}"):
            ShmWriter(name, 4, 4)
    finally:
        live.close()
        live.unlink()
    name = _name()
    unpublished = _zeroed_segment(name, 4, 4)  # a writer that died between creating the segment and its header
    try:
        writer = ShmWriter(name, 4, 4)
        writer.write(gradient(0, 4, 4))
        writer.close()
    finally:
        unpublished.close()


def test_a_source_without_new_frames_reports_the_writer_gone_and_picks_up_a_new_one():
    name = _name()
    writer = ShmWriter(name, 8, 8)
    writer.write(gradient(1, 8, 8))
    source = ShmSource(name, timeout=0.2)
    source.open()
    assert _index_of(source.read().image) == 1
    with pytest.raises(DreamwireError, match=rf"no new frame in '{name}' for 0.2 s"):
        source.read()
    source.close()
    source.open()  # re-opened on the same segment: the frame already delivered is not delivered again
    with pytest.raises(DreamwireError, match="no new frame"):
        source.read()
    source.close()
    writer.close()
    with pytest.raises(DreamwireError, match=f"no segment named '{name}'"):
        source.open()
    writer = ShmWriter(name, 8, 8)  # a new writer: its first frame is new, whatever its number
    writer.write(gradient(5, 8, 8))
    source.open()
    assert _index_of(source.read().image) == 5
    source.close()
    writer.close()


def test_shm_uris_default_to_the_instance_names():
    stage = instance("stage")
    assert open_sink("shm:", stage).name == "shm:stage"
    assert open_source("shm:", stage).name == "shm:stage-in"
    assert open_sink("shm:mine?channels=4").name == "shm:mine"
    with pytest.raises(DreamwireError, match=r"channels='5'"):
        open_sink("shm:x?channels=5")
    with pytest.raises(DreamwireError, match="segment name 'a/b' is invalid"):
        open_sink("shm:a/b")


def _zeroed_segment(name: str, width: int, height: int) -> shared_memory.SharedMemory:
    """A segment the size ShmWriter makes, all zero: as it is between its creation and the writer's header."""
    segment = shared_memory.SharedMemory(name, create=True, size=shm.HEADER_BYTES + 2 * width * height * 3)
    shm._CREATED.add(name)  # created by this process: attaching must not untrack it
    return segment


class _OnLog(logging.Handler):
    """Calls `action` once, on the first record of logger bridges.shm whose message contains `text`."""

    def __init__(self, text: str, action) -> None:
        super().__init__(logging.DEBUG)
        self.text, self.action, self.fired = text, action, False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.fired and self.text in record.getMessage():
            self.fired = True
            self.action()


def test_a_reader_that_attaches_before_the_header_is_written_waits_for_it_then_reads_frames(monkeypatch, caplog):
    """Issue 21: the segment exists before its header does. The reader attaches in between and finds it all zero;
    the writer publishes the header while the reader waits; the reader then reads frames (on the old code it
    refused the segment as "not a dreamwire frame segment")."""
    name = _name()
    segment = _zeroed_segment(name, 8, 4)
    monkeypatch.setattr(shm, "_create", lambda _name, _size: segment)  # the writer fills this very segment
    writers: list[ShmWriter] = []

    def publish() -> None:  # runs while the reader waits: the writer finishes starting, and writes a frame
        writers.append(ShmWriter(name, 8, 4))
        writers[0].write(gradient(3, 8, 4))

    caplog.set_level(logging.DEBUG, logger="bridges.shm")
    handler = _OnLog("has not published the header yet", publish)
    logging.getLogger("bridges.shm").addHandler(handler)
    try:
        reader = ShmReader(name)
    finally:
        logging.getLogger("bridges.shm").removeHandler(handler)
    try:
        assert handler.fired and writers  # the reader did attach before the header, and waited for it
        assert reader.shape == (4, 8, 3)
        n, image = reader.read_new(0)
        assert n == 1 and _index_of(image) == 3
        writers[0].write(gradient(4, 8, 4))
        n, image = reader.read_new(n)
        assert n == 2 and _index_of(image) == 4
        assert "not a dreamwire" not in caplog.text
    finally:
        reader.close()
        for writer in writers:
            writer.close()
        segment.close()


def test_not_ready_waits_and_says_so_not_ours_is_refused_at_once(caplog):
    caplog.set_level(logging.DEBUG, logger="bridges.shm")
    name = _name()
    segment = _zeroed_segment(name, 2, 2)
    try:
        with pytest.raises(shm.ShmNotReady, match=f"segment '{name}' exists, but its writer has not written the"):
            ShmReader(name, wait=0.05)
        assert "has not published the header yet" in caplog.text  # it waited
        caplog.clear()
        segment.buf[:4] = b"XXXX"  # another program's segment with the same name
        with pytest.raises(
            DreamwireError, match=rf"segment '{name}' is not a dreamwire frame segment \(magic b'XXXX'\)"
        ):
            ShmReader(name, wait=30)
        with pytest.raises(DreamwireError, match=f"a segment named '{name}' exists and is not a dreamwire frame"):
            ShmWriter(name, 2, 2)  # and a writer leaves it alone
        struct.pack_into("<4sH", segment.buf, 0, b"DWSM", 2)  # a newer dreamwire's layout
        with pytest.raises(DreamwireError, match=r"has layout version 2 .*this dreamwire reads version 1"):
            ShmReader(name, wait=30)
        assert "has not published the header yet" not in caplog.text  # neither was waited for
    finally:
        segment.close()
        segment.unlink()
        shm._CREATED.discard(name)


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs /dev/shm to make a 0-byte segment by hand")
def test_a_segment_not_sized_yet_is_not_ready():
    """POSIX creates a segment, then sizes it: in between it has 0 bytes, which cannot be mapped."""
    name = _name()
    path = Path("/dev/shm", name)
    path.touch()
    try:
        with pytest.raises(shm.ShmNotReady, match=r"has not written the header within 0\.01 s"):
            ShmReader(name, wait=0.01)
        with pytest.raises(HeaderNotReady):
            FrameReader(name, wait=0)
    finally:
        path.unlink()


def _retrack(name: str) -> None:
    """The example reader untracks the segment it attaches to (right in its own process); here the segment is
    this process's, whose writer unlinks it later: track it again so the resource tracker stays balanced."""
    if os.name == "posix":
        from multiprocessing import resource_tracker

        resource_tracker.register(f"/{name}", "shared_memory")


def _published_on(segment: shared_memory.SharedMemory, monkeypatch: pytest.MonkeyPatch) -> ShmWriter:
    """A ShmWriter that publishes its header on `segment` (created earlier, all zero)."""
    monkeypatch.setattr(shm, "_create", lambda _name, _size: segment)
    return ShmWriter(segment.name.lstrip("/"), 8, 4)


def test_the_numpy_only_reader_tells_not_ready_from_not_ours(monkeypatch):
    name = _name()
    segment = _zeroed_segment(name, 8, 4)
    writer = None
    try:
        with pytest.raises(HeaderNotReady):
            FrameReader(name, wait=0)  # a TouchDesigner cook: no wait, try again next cook
        with pytest.raises(HeaderNotReady):
            FrameReader(name, wait=0.02)
        writer = _published_on(segment, monkeypatch)
        writer.write(gradient(7, 8, 4))
        reader = FrameReader(name, wait=0)
        _retrack(name)
        assert reader.shape == (4, 8, 3) and _index_of(reader.latest()) == 7
        reader.close()
    finally:
        if writer is not None:
            writer.close()
        segment.close()
    name = _name()
    segment = _zeroed_segment(name, 8, 4)
    try:
        segment.buf[:4] = b"XXXX"  # another program's segment with that name
        with pytest.raises(ValueError, match=rf"'{name}' is not a dreamwire frame segment \(magic b'XXXX'\)"):
            FrameReader(name, wait=30)
        _retrack(name)
    finally:
        segment.close()
        segment.unlink()
        shm._CREATED.discard(name)


class _ScriptTop:
    """The parts of TouchDesigner's scriptOp that examples/touchdesigner_script_top.py uses."""

    def __init__(self, segment: str) -> None:
        self.par = type("Par", (), {"Segment": segment})()
        self.images: list[np.ndarray] = []
        self.warnings: list[str] = []

    def copyNumpyArray(self, image: np.ndarray) -> None:  # TouchDesigner's name
        self.images.append(image)

    def addWarning(self, text: str) -> None:
        self.warnings.append(text)


def test_the_touchdesigner_script_top_waits_for_a_starting_writer_and_warns_about_a_foreign_segment(monkeypatch):
    import touchdesigner_script_top as script

    monkeypatch.setattr(script, "absTime", type("AbsTime", (), {"frame": 1})(), raising=False)
    monkeypatch.setattr(script, "_reader", None)
    name = _name()
    top = _ScriptTop(name)
    script.onCook(top)  # no segment yet: nothing, no warning
    segment = _zeroed_segment(name, 8, 4)
    writer = None
    try:
        script.onCook(top)  # the header is not written yet: nothing, no warning, no wait
        assert top.images == [] and top.warnings == []
        writer = _published_on(segment, monkeypatch)
        writer.write(gradient(2, 8, 4))
        script.onCook(top)
        _retrack(name)
        assert len(top.images) == 1 and _index_of(top.images[0][::-1]) == 2 and top.warnings == []  # bottom row first
        writer._views.state[0] = shm.CLOSED  # the writer stops, and another program takes the name
        segment.buf[:4] = b"XXXX"
        script.onCook(top)
        _retrack(name)
        assert top.warnings == [f"shared memory '{name}' is not a dreamwire frame segment (magic b'XXXX')"]
        assert script._reader is None
    finally:
        if script._reader is not None:
            script._reader.close()
        if writer is not None:
            writer.close()
        segment.close()
