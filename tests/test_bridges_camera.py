"""camera: bridge: OpenCV capture, driven by a generated video file through the same code path as a device; the
one-line reason when no device opens, with OpenCV's own warnings kept quiet; a grabber that dies is supervised;
a camera plugged in after the start is picked up (those three with a stand-in cv2 where a device is needed)."""

from __future__ import annotations

import glob
import logging
import sys
import threading
import time
from typing import Any

import numpy as np
import pytest

from bridges import camera
from bridges.camera import CameraSource, auto_backend, why_not_opened
from bridges.clip_io import ClipWriter
from bridges.uri import open_source
from engine.core.errors import DreamwireError
from engine.core.frames import Frame
from engine.core.slot import LatestFrameSlot
from engine.core.supervisor import Supervisor
from engine.live.io_threads import SourceWorker

cv2 = pytest.importorskip("cv2", reason="the camera extra (opencv-python-headless) is not installed")


@pytest.fixture
def video(tmp_path):
    """48x64, 60 frames: top half red, bottom half blue (so channel order and orientation both show)."""
    image = np.zeros((48, 64, 3), np.uint8)
    image[:24] = (220, 30, 30)
    image[24:] = (30, 30, 220)
    path = tmp_path / "camera.mp4"
    with ClipWriter(path, fps=30) as writer:
        for _ in range(60):
            writer.write(image)
    return path, image


def test_the_camera_source_reads_a_video_file_through_the_device_code_path(video):
    path, image = video
    source = open_source(f"camera:{path}?backend=ffmpeg")
    assert isinstance(source, CameraSource) and source.backend == "ffmpeg"
    source.open()
    try:
        frames = [source.read() for _ in range(3)]
    finally:
        source.close()
    for frame in frames:
        assert frame.image.shape == (48, 64, 3) and frame.image.dtype == np.uint8
        away_from_the_edge = np.r_[0:20, 28:48]  # 4:2:0 chroma blurs the rows where red meets blue
        difference = np.abs(frame.image.astype(int) - image)[away_from_the_edge]
        assert difference.max() <= 12  # lossy video; RGB order (OpenCV gives BGR), top half first
    assert [f.index for f in frames] == [0, 1, 2]


def test_the_end_of_the_stream_counts_as_a_lost_device_and_the_worker_reopens_it(video):
    path, _ = video
    slot: LatestFrameSlot[Frame] = LatestFrameSlot()
    worker = SourceWorker(CameraSource(str(path), backend="ffmpeg"), slot, backoff_start=0.01, backoff_max=0.02)
    worker.start()
    try:
        got = 0
        while worker.restarts < 2 and got < 10_000:
            got += slot.get(timeout=5) is not None
    finally:
        worker.stop()
    assert worker.restarts >= 2 and worker.frames > 2  # read on, lost at the end, re-opened, read again


def test_no_device_is_one_line_saying_why_and_opencv_stays_quiet(capfd, caplog):
    """Defect 15 of issue 14: OpenCV printed two V4L2 warnings on every retry; the reason is plain words."""
    level = cv2.utils.logging.getLogLevel()
    source = open_source("camera:57")
    for _ in range(2):  # two retries
        with pytest.raises(DreamwireError) as info:
            source.open()
    message = str(info.value)
    assert "\n" not in message
    if sys.platform.startswith("linux"):
        devices = sorted(glob.glob("/dev/video*"))
        expected = f"could not be opened; found: {', '.join(devices)}" if devices else "no camera found (devices: none)"
        assert message == f"camera:57: {expected}"
    else:
        assert message.startswith("camera:57: ") and ("no camera found" in message or "could not be opened" in message)
    assert capfd.readouterr().err == ""  # nothing from OpenCV on stderr
    assert cv2.utils.logging.getLogLevel() == level  # quiet for the probe only: the level is back
    caplog.set_level(logging.DEBUG, logger="bridges.camera")  # debugging: OpenCV's own words show again
    with pytest.raises(DreamwireError):
        source.open()
    if sys.platform.startswith("linux"):
        assert "VIDEOIO(V4L2" in capfd.readouterr().err


def test_the_reason_a_camera_did_not_open_is_plain_words(tmp_path):
    assert why_not_opened(0, [], "linux") == "no camera found (devices: none)"
    assert why_not_opened(9, ["/dev/video0"], "linux") == "could not be opened; found: /dev/video0"
    assert why_not_opened(0, ["/dev/video0", "/dev/video1"], "linux") == (
        "could not be opened (in use by another program?); found: /dev/video0, /dev/video1"
    )
    assert why_not_opened(1, ["0", "1"], "win32").startswith("could not be opened (in use by another program?)")
    missing = str(tmp_path / "video7")
    assert why_not_opened(missing, [], "linux") == f"{missing} does not exist; no camera found"
    (tmp_path / "clip.mp4").write_bytes(b"not a video")
    assert why_not_opened(str(tmp_path / "clip.mp4"), [], "linux").endswith("is a file OpenCV could not read as video")


class FakeCv2:
    """The parts of cv2 that bridges/camera.py uses, with one device: absent for the first `absent` opens, then
    delivering 8x8 frames every 2 ms (pixel value = read number); read number `fail_at` raises, and so does every
    read from `fail_from` on (OpenCV raises cv2.error from a driver failure)."""

    CAP_ANY, CAP_V4L2, CAP_MSMF, CAP_DSHOW, CAP_AVFOUNDATION, CAP_FFMPEG = 0, 200, 1400, 700, 1200, 1900
    CAP_PROP_FRAME_WIDTH, CAP_PROP_FRAME_HEIGHT, CAP_PROP_FPS, CAP_PROP_BUFFERSIZE = 3, 4, 5, 38

    class error(Exception):  # cv2's name
        pass

    def __init__(self, absent: int = 0, fail_at: int = 0, fail_from: int = 0) -> None:
        self.absent, self.fail_at, self.fail_from = absent, fail_at, fail_from
        self.opens = self.reads = 0
        self._lock = threading.Lock()

    def devices(self) -> list[str]:
        return ["/dev/video0"] if self.opens > self.absent else []

    def VideoCapture(self, device: Any, api: int) -> FakeCapture:  # cv2's name
        self.opens += 1
        return FakeCapture(self, opened=self.opens > self.absent)


class FakeCapture:
    def __init__(self, cv2: FakeCv2, opened: bool) -> None:
        self.cv2, self.opened = cv2, opened

    def isOpened(self) -> bool:
        return self.opened

    def set(self, prop: int, value: float) -> bool:
        return True

    def read(self) -> tuple[bool, np.ndarray]:
        time.sleep(0.002)
        with self.cv2._lock:
            self.cv2.reads += 1
            n = self.cv2.reads
        if n == self.cv2.fail_at or (self.cv2.fail_from and n >= self.cv2.fail_from):
            raise FakeCv2.error("VIDIOC_DQBUF: No such device")
        return True, np.full((8, 8, 3), n % 256, np.uint8)

    def release(self) -> None:
        self.opened = False


@pytest.fixture
def fake_cv2(monkeypatch):
    def install(**behaviour: int) -> FakeCv2:
        fake = FakeCv2(**behaviour)
        monkeypatch.setattr(camera, "_cv2", lambda: fake)
        monkeypatch.setattr(camera, "list_devices", lambda cv2, api: fake.devices())
        return fake

    return install


def _supervisor_errors(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "engine.core.supervisor" and r.levelno == logging.ERROR]


def test_a_grabber_that_raises_is_logged_with_its_cause_and_restarted_and_frames_go_on(fake_cv2, caplog, capfd):
    """Defect 5 of issue 14: the 5th read() raised, the grabber died with its traceback on stderr, and the source
    then said only "sent no frame for 2 s"."""
    fake = fake_cv2(fail_at=5)
    supervisor = Supervisor()
    source = CameraSource(0, supervisor=supervisor, timeout=30.0)
    source.open()
    try:
        frames = [source.read() for _ in range(8)]
    finally:
        source.close()
    values = [int(frame.image[0, 0, 0]) for frame in frames]
    assert values == sorted(values) and values[-1] > 5  # frames went on after the death
    snapshot = supervisor.snapshot()
    assert snapshot["thread_deaths"] == 1 and snapshot["thread_restarts"] == 1
    assert snapshot["last_thread_error"] == "dreamwire-camera-0: error: VIDIOC_DQBUF: No such device"
    (death,) = _supervisor_errors(caplog)  # through logging, once, with the traceback
    assert "thread dreamwire-camera-0 died: error: VIDIOC_DQBUF: No such device" in death.getMessage()
    assert death.exc_info is not None and death.exc_info[0] is FakeCv2.error
    assert "Traceback" not in capfd.readouterr().err  # not printed past logging
    assert fake.opens == 1  # restarted in place: the device was not re-opened


def test_a_grabber_that_keeps_failing_makes_read_name_the_cause(fake_cv2, caplog):
    fake_cv2(fail_from=3)
    supervisor = Supervisor()
    source = CameraSource(0, supervisor=supervisor, timeout=0.5)
    source.open()
    try:
        source.read()  # reads 1 and 2 went through
        with pytest.raises(DreamwireError) as info:
            for _ in range(100):
                source.read()
    finally:
        source.close()
    assert str(info.value) == "camera:0: reading frames failed: error: VIDIOC_DQBUF: No such device"
    assert supervisor.snapshot()["thread_deaths"] >= 2
    assert len(_supervisor_errors(caplog)) == 1  # one line for the whole failure streak


def test_a_camera_missing_at_start_is_picked_up_when_it_is_plugged_in(fake_cv2, caplog):
    fake = fake_cv2(absent=3)
    slot: LatestFrameSlot[Frame] = LatestFrameSlot()
    worker = SourceWorker(CameraSource(0, supervisor=Supervisor()), slot, backoff_start=0.01, backoff_max=0.02)
    caplog.set_level(logging.INFO)
    worker.start()
    try:
        frame = slot.get(timeout=30)
    finally:
        worker.stop()
    assert frame is not None and frame.image.shape == (8, 8, 3)
    assert fake.opens == 4 and worker.restarts == 3  # three failed opens, retried, then the device was there
    missing = [r.getMessage() for r in caplog.records if "no camera found" in r.getMessage()]
    assert len(missing) == 1  # one line for the streak, with the reason
    assert "camera:0: no camera found (devices: none)" in missing[0]


def test_camera_uri_options():
    source = open_source("camera:/dev/video2?width=1280&height=720&fps=30&backend=any")
    assert (source.device, source.width, source.height, source.fps) == ("/dev/video2", 1280, 720, 30.0)
    assert open_source("camera:").device == 0 and open_source("camera:1").device == 1
    assert open_source("camera:").backend == auto_backend()
    assert {auto_backend(p) for p in ("linux", "win32", "darwin")} == {"v4l2", "msmf", "avfoundation"}
    with pytest.raises(DreamwireError, match="backend 'quicktime' is unknown"):
        open_source("camera:?backend=quicktime")
