"""Preview sink over real sockets: /frame.jpg, the MJPEG stream, the control page's address book, a slow client,
port release, and a real browser."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from cdp import FLAGS, chromium_or_skip
from PIL import Image

from bridges.pattern import pattern_image
from bridges.preview import PreviewSink
from engine.core.errors import DreamwireError
from engine.core.frames import Frame


def _frame(i: int, width: int = 160, height: int = 120) -> Frame:
    return Frame(image=pattern_image(i, width, height), index=i, capture_time=time.perf_counter())


@pytest.fixture
def sink():
    preview = PreviewSink(port=0)
    preview.open()
    yield preview
    preview.close()


def _get(url: str, timeout: float = 5.0) -> tuple[str, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.headers["Content-Type"], response.read()


def test_frame_jpg_and_page(sink):
    with pytest.raises(urllib.error.HTTPError) as info:
        _get(sink.url + "frame.jpg")
    assert info.value.code == 503  # nothing written yet
    sink.write(_frame(0))
    sink.write(_frame(1))
    content_type, body = _get(sink.url + "frame.jpg")
    assert content_type == "image/jpeg"
    image = Image.open(io.BytesIO(body))
    assert image.size == (160, 120)
    decoded = np.asarray(image.convert("RGB")).astype(int)
    assert np.abs(decoded - pattern_image(1, 160, 120)).mean() < 12  # the newest frame, not the first
    content_type, page = _get(sink.url)
    assert content_type.startswith("text/html") and b'src="/stream.mjpg"' in page
    assert b"<title>dreamwire preview</title>" in page and b"OSCQuery" in page  # the control page
    sink.set_status("fps 29.9")
    assert _get(sink.url + "status")[1] == b"fps 29.9"
    content_type, body = _get(sink.url + "control.json")
    assert content_type.startswith("application/json")
    assert json.loads(body) == {"oscquery_port": None}  # no OSC surface in this process: the page shows no controls
    with pytest.raises(urllib.error.HTTPError) as info:
        _get(sink.url + "nope")
    assert info.value.code == 404


def test_a_port_in_use_is_one_line_naming_it(sink):
    with pytest.raises(DreamwireError, match=rf"preview: cannot listen on TCP 127\.0\.0\.1:{sink.port} \(.*\); pick"):
        PreviewSink(port=sink.port).open()


def _read_first_part(port: int) -> tuple[bytes, bytes]:
    """Raw socket read of /stream.mjpg up to the end of the first JPEG part: (response head, jpeg bytes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as conn:
        conn.sendall(b"GET /stream.mjpg HTTP/1.0\r\n\r\n")
        data = b""
        while data.count(b"\r\n\r\n") < 2:  # the response head, then the first part's head
            chunk = conn.recv(65536)
            assert chunk, "stream ended before the first part"
            data += chunk
        head, rest = data.split(b"\r\n\r\n", 1)
        part_head, body = rest.split(b"\r\n\r\n", 1)
        length = int(
            next(line for line in part_head.split(b"\r\n") if line.lower().startswith(b"content-length")).split(b":")[1]
        )
        while len(body) < length:
            chunk = conn.recv(65536)
            assert chunk, "stream ended inside the first part"
            body += chunk
        return head + b"\r\n" + part_head, body[:length]


def test_stream_first_part_is_a_jpeg(sink):
    sink.write(_frame(3))
    head, jpeg = _read_first_part(sink.port)
    assert b"multipart/x-mixed-replace; boundary=" in head
    assert b"Content-Type: image/jpeg" in head
    assert Image.open(io.BytesIO(jpeg)).size == (160, 120)


def test_slow_client_never_blocks_write_and_close_releases_the_port():
    sink = PreviewSink(port=0, name="slow-client-test")
    sink.open()
    port = sink.port
    sink.write(_frame(0, 512, 512))
    stalled = socket.create_connection(("127.0.0.1", port), timeout=5.0)  # reads nothing: its buffers fill up
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(b"GET /stream.mjpg HTTP/1.0\r\n\r\n")
    images = [pattern_image(i, 512, 512) for i in range(4)]
    start = time.perf_counter()
    for i in range(200):
        sink.write(Frame(images[i % 4], i, 0.0))
        if i % 20 == 0:
            time.sleep(0.01)  # let the client thread encode and fill its socket
    assert time.perf_counter() - start < 1.5  # 200 writes; a write() blocked on the client would take seconds
    _, body = _get(sink.url + "frame.jpg")  # other clients are still served
    assert Image.open(io.BytesIO(body)).size == (512, 512)
    start = time.perf_counter()
    sink.close()
    assert time.perf_counter() - start < 2.0
    stalled.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
    again = PreviewSink(port=port)  # the port is free to listen on again
    again.open()
    again.close()


def test_browser_shows_the_stream(tmp_path, sink):
    chromium = chromium_or_skip()
    sink.set_status("dreamwire test")
    stop = threading.Event()

    def feed() -> None:
        i = 0
        while not stop.is_set():
            sink.write(_frame(i, 320, 240))
            i += 1
            stop.wait(1 / 30)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    shot = tmp_path / "shot.png"
    command = [
        chromium,
        *FLAGS,
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=640,480",
        "--virtual-time-budget=3000",
        sink.url,
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    finally:
        stop.set()
        feeder.join()
    assert shot.exists(), f"no screenshot; chromium said: {result.stderr[-2000:]}"
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape == (480, 640, 3)
    white = (pixels.min(axis=2) > 230).sum()  # the pattern's moving square (the page itself is #111)
    blue = ((pixels[..., 2] > 200) & (pixels[..., 0] < 80)).sum()  # blue bars where the red ramp is low
    red = ((pixels[..., 0] > 200) & (pixels[..., 2] < 80)).sum()  # red ramp between the bars
    assert white > 200 and blue > 200 and red > 200, (white, blue, red)


def test_without_chromium_the_browser_tests_fail_under_ci_and_skip_elsewhere(monkeypatch, capsys):
    import cdp

    monkeypatch.setattr(cdp.shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true: the browser test cannot be skipped"):
        cdp.chromium_or_skip()
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception, match="is not installed"):
        cdp.chromium_or_skip()
    assert "skipping the browser test" in capsys.readouterr().out  # the reason, printed
