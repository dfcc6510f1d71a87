"""Pattern source: a pure function of the index, visibly moving, paced drift-free; plus the URI table."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from bridges.base import BridgeUnavailable, Source
from bridges.pattern import PatternSource, pattern_image
from bridges.uri import open_sink, open_source, source_fit
from engine.core.errors import DreamwireError


def test_pattern_is_deterministic_and_moves():
    a, b, c = pattern_image(7, 96, 64), pattern_image(7, 96, 64), pattern_image(8, 96, 64)
    assert a.shape == (64, 96, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert np.mean(np.abs(a.astype(int) - c.astype(int))) > 1.0  # consecutive frames visibly differ
    assert a.min() == 0 and a.max() == 255  # full contrast: the square's outline and fill


def test_source_frames_match_pattern_image_and_count_up():
    source = PatternSource(width=32, height=24, fps=0)
    source.open()
    frames = [source.read() for _ in range(3)]
    source.close()
    assert [f.index for f in frames] == [0, 1, 2]
    assert all(np.array_equal(f.image, pattern_image(f.index, 32, 24)) for f in frames)
    assert frames[0].capture_time <= frames[1].capture_time <= frames[2].capture_time
    assert isinstance(source, Source)


def test_pacing_is_at_fps():
    source = PatternSource(width=64, height=64, fps=50)
    source.open()
    start = time.perf_counter()
    for _ in range(10):
        source.read()
    elapsed = time.perf_counter() - start
    assert 0.17 <= elapsed <= 1.0  # frame 9 is due at 9/50 = 0.18 s; the upper bound allows a loaded machine


def test_uri_builds_sources_and_sinks():
    source = open_source("pattern:?width=40&height=30&fps=0")
    source.open()
    frame = source.read()
    assert frame is not None and frame.image.shape == (30, 40, 3)
    assert open_source("file:clip.mp4?fps=24&loop=1").name == "file:clip.mp4"
    assert open_sink("preview:?port=0").name == "preview"


@pytest.mark.parametrize(
    ("uri", "needle"),
    [
        ("foo:bar", "'foo'"),
        ("clip.mp4", "file:clip.mp4"),
        ("pattern:?widht=3", "'widht'"),
        ("pattern:?width=abc", "'abc'"),
        ("pattern:?fps=-1", "'-1'"),
        ("file:", "needs a path"),
        ("file:x.npy?loop=2", "'2'"),
    ],
)
def test_uri_errors_name_the_bad_value(uri, needle):
    with pytest.raises(DreamwireError) as info:
        open_source(uri)
    message = str(info.value)
    assert needle in message and "\n" not in message


@pytest.mark.parametrize(("scheme", "system"), [("spout", "Windows"), ("syphon", "macOS")])
def test_platform_schemes_fail_clearly_elsewhere(scheme, system, monkeypatch):
    monkeypatch.setattr("sys.platform", "linux")
    with pytest.raises(BridgeUnavailable) as info:
        open_source(f"{scheme}:")
    assert str(info.value) == (
        f"{scheme}: needs {system} (this is Linux) and the '{scheme}' extra: pip install 'dreamwire[{scheme}]'"
    )


@pytest.mark.parametrize(
    ("uri", "module", "message"),
    [
        ("ndi:", "cyndilib", "ndi: needs the 'ndi' extra (cyndilib is not installed): pip install 'dreamwire[ndi]'"),
        (
            "camera:0",
            "cv2",
            "camera: needs the 'camera' extra (opencv-python-headless is not installed): "
            "pip install 'dreamwire[camera]'",
        ),
    ],
)
def test_a_missing_extra_is_one_line_naming_it(uri, module, message, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # as if the package were not installed
    with pytest.raises(BridgeUnavailable) as info:
        open_source(uri)
    assert str(info.value) == message


def test_every_source_takes_fit_and_only_known_fits():
    assert source_fit("pattern:?fit=letterbox") == "letterbox" and source_fit("pattern:") == "stretch"
    assert open_source("pattern:?fit=crop&width=32").width == 32  # fit never reaches the source
    with pytest.raises(DreamwireError, match=r"pattern: fit='zoom' in 'pattern:\?fit=zoom' is unknown"):
        open_source("pattern:?fit=zoom")
