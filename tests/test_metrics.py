from __future__ import annotations

import io
import logging
import sys
import threading
import time
import types

import pytest

from engine.live.metrics import EngineMetrics, NvmlPower, StatusLinePrinter, status_line

KEYS = {
    "fps_out",
    "fps_in",
    "latency_p50_ms",
    "latency_p95_ms",
    "unet_ms",
    "skip_rate",
    "dropped",
    "power_w",
    "power_errors",
    "frames",
    "source",
}


def _no_power() -> float | None:
    return None


def test_empty_snapshot_has_stable_keys_and_none_values():
    m = EngineMetrics(power_fn=_no_power)
    snap = m.snapshot(now=0.0)
    assert set(snap) == KEYS
    assert snap["fps_out"] == 0.0
    assert snap["fps_in"] == 0.0
    assert snap["latency_p50_ms"] is None
    assert snap["unet_ms"] is None
    assert snap["skip_rate"] is None
    assert (snap["dropped"], snap["frames"]) == (0, 0)


def test_synthetic_timestamps_give_known_numbers():
    m = EngineMetrics(window_s=2.0, max_frames=120, power_fn=_no_power)
    # 3 s of output at 20 fps: frame k at k/20 s, latency (k % 10 + 1) * 10 ms, every 4th skipped.
    for k in range(60):
        now = k / 20.0
        m.on_input_frame(now=now - 0.001)
        m.on_input_frame(now=now + 0.024)  # inputs at 40 fps
        skipped = k % 4 == 0
        m.on_output_frame(
            capture_time=now - (k % 10 + 1) * 0.010, now=now, unet_ms=None if skipped else 10.0 + k % 2, skipped=skipped
        )
    m.on_input_dropped(3)
    m.on_input_dropped(2)
    snap = m.snapshot(now=59 / 20.0 + 0.01)
    assert snap["fps_out"] == pytest.approx(20.0)
    assert snap["fps_in"] == pytest.approx(40.0, rel=0.03)
    # Window [0.96, 2.96] s holds frames 20..59: 40 frames, latencies 10..100 ms four times each.
    lat = sorted((k % 10 + 1) * 10.0 for k in range(20, 60))
    assert snap["latency_p50_ms"] == pytest.approx(_np_percentile(lat, 50))
    assert snap["latency_p95_ms"] == pytest.approx(_np_percentile(lat, 95))
    assert snap["latency_p50_ms"] == pytest.approx(55.0)
    assert snap["latency_p95_ms"] == pytest.approx(100.0)
    assert snap["skip_rate"] == pytest.approx(0.25)  # k = 20, 24, ..., 56
    unet = [10.0 + k % 2 for k in range(20, 60) if k % 4]
    assert snap["unet_ms"] == pytest.approx(sum(unet) / len(unet))
    assert snap["dropped"] == 5
    assert snap["frames"] == 60


def test_percentiles_match_numpy_linear():
    m = EngineMetrics(window_s=100.0, power_fn=_no_power)
    for i, lat_ms in enumerate([5.0, 1.0, 4.0, 2.0, 3.0, 100.0]):
        m.on_output_frame(capture_time=i - lat_ms / 1000.0, now=float(i), unet_ms=1.0, skipped=False)
    snap = m.snapshot(now=5.0)
    assert snap["latency_p50_ms"] == pytest.approx(3.5)
    assert snap["latency_p95_ms"] == pytest.approx(_np_percentile([1, 2, 3, 4, 5, 100], 95))
    assert snap["skip_rate"] == 0.0


def test_window_forgets_a_stall_and_ring_is_bounded():
    m = EngineMetrics(window_s=2.0, max_frames=10, power_fn=_no_power)
    for k in range(50):
        m.on_output_frame(capture_time=k / 30.0, now=k / 30.0 + 0.02, unet_ms=5.0, skipped=False)
    assert len(m._out) == 10
    assert m.snapshot(now=50 / 30.0)["fps_out"] == pytest.approx(30.0)
    stalled = m.snapshot(now=10.0)
    assert stalled["fps_out"] == 0.0
    assert stalled["latency_p50_ms"] is None
    assert stalled["frames"] == 50


def test_dropped_rejects_negative():
    with pytest.raises(ValueError, match="-1"):
        EngineMetrics(power_fn=_no_power).on_input_dropped(-1)


def test_nvml_absent_gives_none_without_raising(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    m = EngineMetrics()
    m.on_output_frame(capture_time=0.0, now=0.01, unet_ms=1.0, skipped=False)
    assert m.snapshot()["power_w"] is None
    assert m.snapshot()["power_w"] is None
    m.close()


def test_nvml_init_failure_gives_none(monkeypatch):
    fake = types.ModuleType("pynvml")

    def fail() -> None:
        raise RuntimeError("NVML Shared Library Not Found")

    fake.nvmlInit = fail  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert NvmlPower().read() is None


def test_nvml_power_in_watts_sampled_at_most_once_per_interval(monkeypatch):
    calls = []
    fake = types.ModuleType("pynvml")
    fake.nvmlInit = lambda: None  # type: ignore[attr-defined]
    fake.nvmlShutdown = lambda: calls.append("shutdown")  # type: ignore[attr-defined]
    fake.nvmlDeviceGetHandleByIndex = lambda i: f"gpu{i}"  # type: ignore[attr-defined]

    def power(handle: str) -> int:
        calls.append(handle)
        return 215_000 + len(calls)  # milliwatts

    fake.nvmlDeviceGetPowerUsage = power  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    m = EngineMetrics(power_interval_s=1.0)
    assert m.snapshot(now=10.0)["power_w"] == pytest.approx(215.001)
    assert m.snapshot(now=10.5)["power_w"] == pytest.approx(215.001)
    assert m.snapshot(now=11.0)["power_w"] == pytest.approx(215.002)
    assert calls == ["gpu0", "gpu0"]
    m.close()
    assert calls[-1] == "shutdown"


def test_nvml_read_failures_are_counted_warned_once_per_streak_and_shown(monkeypatch, caplog):
    readings = iter([RuntimeError("NVML_ERROR_GPU_IS_LOST"), RuntimeError("again"), 200_000, RuntimeError("third")])
    fake = types.ModuleType("pynvml")
    fake.nvmlInit = lambda: None  # type: ignore[attr-defined]
    fake.nvmlShutdown = lambda: None  # type: ignore[attr-defined]
    fake.nvmlDeviceGetHandleByIndex = lambda i: f"gpu{i}"  # type: ignore[attr-defined]

    def power(handle: str) -> int:
        reading = next(readings)
        if isinstance(reading, Exception):
            raise reading
        return reading

    fake.nvmlDeviceGetPowerUsage = power  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    m = EngineMetrics(power_interval_s=1.0)
    with caplog.at_level(logging.INFO, logger="engine.live.metrics"):
        first, second, good, third = (m.snapshot(now=float(t)) for t in (10, 11, 12, 13))
    assert (first["power_w"], first["power_errors"]) == (None, 1)
    assert (second["power_w"], second["power_errors"]) == (None, 2)
    assert (good["power_w"], good["power_errors"]) == (pytest.approx(200.0), 2)
    assert (third["power_w"], third["power_errors"]) == (None, 3)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings  # one per streak: readings 1-2, then reading 4
    assert "reading GPU power failed: RuntimeError: NVML_ERROR_GPU_IS_LOST" in warnings[0]
    m.close()


def test_snapshot_is_a_copy_and_thread_safe():
    m = EngineMetrics(window_s=1e9, max_frames=64, power_fn=_no_power)
    snap = m.snapshot(now=0.0)
    snap["frames"] = 99
    assert m.snapshot(now=0.0)["frames"] == 0
    total = 200_000

    def writer() -> None:
        for k in range(total):  # frame k's UNet time is k ms: the window's mean tells which frames it holds
            m.on_output_frame(capture_time=0.0, now=1.0, unet_ms=float(k), skipped=False)

    # A frame updates two things (the window and the count). A snapshot taken between the two would see a window
    # that does not end at its count; under the lock none does. Thread switches every microsecond to provoke it.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        t = threading.Thread(target=writer)
        t.start()
        torn = []
        while t.is_alive():
            snap = m.snapshot(now=1.0)
            frames = snap["frames"]
            held = min(frames, 64)  # the window holds frames frames - held .. frames - 1
            if held and snap["unet_ms"] != frames - (held + 1) / 2:
                torn.append((frames, snap["unet_ms"]))
        t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not torn, torn[:5]
    assert m.snapshot(now=1.0)["frames"] == total


def test_status_line_formats_values_and_dashes():
    snap = {
        "fps_out": 29.84,
        "fps_in": 30.0,
        "latency_p50_ms": 41.2,
        "latency_p95_ms": 55.0,
        "unet_ms": 12.34,
        "skip_rate": 0.123,
        "dropped": 3,
        "power_w": 215.4,
        "frames": 1000,
    }
    assert status_line(snap) == "out 29.8 fps | in 30.0 | lat 41/55 ms | unet 12.3 ms | skip 12% | drop 3 | 215 W"
    empty = EngineMetrics(power_fn=_no_power).snapshot(now=0.0)
    assert status_line(empty) == "out 0.0 fps | in 0.0 | lat -/- ms | unet - ms | skip - | drop 0 | - W"
    assert status_line({**snap, "source": "ok"}).endswith("| 215 W")  # a healthy source says nothing
    waiting = EngineMetrics(power_fn=_no_power)
    waiting.set_source_state(lambda: "waiting for camera:9: camera 9 could not be opened")
    assert waiting.snapshot()["source"] == "waiting for camera:9: camera 9 could not be opened"
    assert status_line(waiting.snapshot()).endswith("| - W | waiting for camera:9: camera 9 could not be opened")


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_printer_rewrites_one_tty_line_at_most_every_half_second():
    m = EngineMetrics(power_fn=_no_power)
    out = _Tty()
    p = StatusLinePrinter(m, stream=out, clock=lambda: 0.0)
    assert p.is_tty
    assert p.tick(now=0.0)
    assert not p.tick(now=0.3)
    assert p.tick(now=0.6)
    text = out.getvalue()
    assert text.count("\r") == 2
    assert "\n" not in text
    assert text.startswith("\rout ")
    p.close()
    assert out.getvalue().endswith("\n")


def test_printer_logs_every_five_seconds_when_not_a_tty(caplog):
    caplog.set_level(logging.INFO, logger="engine.live.metrics")
    out = io.StringIO()
    p = StatusLinePrinter(EngineMetrics(power_fn=_no_power), stream=out)
    assert not p.is_tty
    shown = [p.tick(now=t) for t in (0.0, 0.5, 4.9, 5.0, 9.0, 10.1)]
    assert shown == [True, False, False, True, False, True]
    assert out.getvalue() == ""
    assert len([r for r in caplog.records if r.getMessage().startswith("out ")]) == 3
    p.close()


def test_printer_thread_starts_and_stops():
    out = _Tty()
    p = StatusLinePrinter(EngineMetrics(power_fn=_no_power), stream=out, tty_interval_s=0.02)
    p.start()
    time.sleep(0.1)
    p.close()
    assert out.getvalue().count("\r") >= 2
    assert p._thread is None


def _np_percentile(values: list[float], q: float) -> float:
    """numpy.percentile(values, q) (linear), computed independently of the code under test."""
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q))
