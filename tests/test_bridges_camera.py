"""camera: bridge: OpenCV capture, driven by a generated video file through the same code path as a device, and
the one-line error when no device opens."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from bridges.camera import CameraSource, auto_backend
from bridges.clip_io import ClipWriter
from bridges.uri import open_source
from engine.core.errors import DreamwireError
from engine.core.frames import Frame
from engine.core.slot import LatestFrameSlot
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


def test_no_device_is_one_line_naming_what_was_found():
    source = open_source("camera:57")
    with pytest.raises(DreamwireError) as info:
        source.open()
    message = str(info.value)
    assert message.startswith("camera 57 could not be opened; found")
    assert "\n" not in message
    if sys.platform.startswith("linux"):
        import glob

        devices = sorted(glob.glob("/dev/video*"))
        assert message.endswith(", ".join(devices) if devices else "found no camera devices")


def test_camera_uri_options():
    source = open_source("camera:/dev/video2?width=1280&height=720&fps=30&backend=any")
    assert (source.device, source.width, source.height, source.fps) == ("/dev/video2", 1280, 720, 30.0)
    assert open_source("camera:").device == 0 and open_source("camera:1").device == 1
    assert open_source("camera:").backend == auto_backend()
    assert {auto_backend(p) for p in ("linux", "win32", "darwin")} == {"v4l2", "msmf", "avfoundation"}
    with pytest.raises(DreamwireError, match="backend 'quicktime' is unknown"):
        open_source("camera:?backend=quicktime")
