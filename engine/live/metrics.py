"""The engine's live numbers: written by the engine thread, read by others (OSC status feedback, the status line).

The per-frame hooks only take a lock and append a tuple to a bounded deque; windows, percentiles and the GPU power
reading are computed in snapshot(), on the reader's thread.

snapshot() keys (stable):
    fps_out         float        output frames per second over the window (0.0 with fewer than 2 frames in it)
    fps_in          float        input frames per second over the window (0.0 likewise)
    latency_p50_ms  float | None end-to-end latency (output time - capture time) median over the window's output
    latency_p95_ms  float | None   frames, skipped ones included; percentiles interpolate linearly (numpy default)
    unet_ms         float | None mean UNet time per non-skipped output frame in the window (None: no timings)
    skip_rate       float | None fraction of the window's output frames that the similarity filter skipped
    dropped         int          input frames dropped since start (total)
    power_w         float | None GPU power draw in watts via NVML, sampled at most once per power_interval_s
    power_errors    int          GPU power readings that failed since start (total; each streak logged once, warning)
    frames          int          output frames since start (total)
    source          str | None   the source's state: "ok", "ended", "waiting for NAME: reason" (no frame yet) or
                                   "lost NAME: reason" (None when no source is attached: set_source_state())

Input frames are stamped by the source's own thread as they are produced (on_input_frame(stamp), called from
engine/live/io_threads.py), never when the engine takes them: a slow or stalled engine does not bend fps_in.
"""

from __future__ import annotations

import importlib
import logging
import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, TextIO

__all__ = ["EngineMetrics", "NvmlPower", "StatusLinePrinter", "status_line"]

logger = logging.getLogger(__name__)

Snapshot = dict[str, float | int | str | None]


class NvmlPower:
    """GPU power in watts through pynvml (package nvidia-ml-py), imported lazily.

    A missing module, driver or GPU gives None (logged once at INFO: power is simply unknown). A reading that
    fails once NVML is up raises, so that the caller counts it (EngineMetrics: status() and one warning a streak).
    """

    def __init__(self, device_index: int = 0) -> None:
        self._device_index = device_index
        self._nvml: Any = None  # the pynvml module once initialised
        self._handle: Any = None
        self._state = "new"  # new -> ready | unavailable
        self._warned = False

    def read(self) -> float | None:
        if self._state == "new":
            self._init()
        if self._state != "ready":
            return None
        return float(self._nvml.nvmlDeviceGetPowerUsage(self._handle)) / 1000.0  # NVML reports milliwatts

    def close(self) -> None:
        if self._state == "ready":
            try:
                self._nvml.nvmlShutdown()
            except Exception as exc:  # shutting down a status source must not raise either
                logger.debug("nvmlShutdown failed: %s", exc)
        self._state = "unavailable"

    def _init(self) -> None:
        try:
            nvml = importlib.import_module("pynvml")
            nvml.nvmlInit()
            self._handle = nvml.nvmlDeviceGetHandleByIndex(self._device_index)
        except Exception as exc:  # ImportError, no driver, no such GPU: power is simply unknown
            self._state = "unavailable"
            self._note_unavailable(f"GPU power unavailable (NVML): {type(exc).__name__}: {exc}")
            return
        self._nvml = nvml
        self._state = "ready"

    def _note_unavailable(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            logger.info(message)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class EngineMetrics:
    """Sliding-window engine statistics; on_* hooks from the engine thread, snapshot() from any thread.

    Times are seconds on one clock (time.perf_counter(), the clock of Frame.capture_time). The window is the
    last `window_s` seconds before the snapshot time, and at most `max_frames` frames of each kind.
    """

    def __init__(
        self,
        window_s: float = 2.0,
        max_frames: int = 120,
        power_interval_s: float = 1.0,
        power_fn: Callable[[], float | None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not (math.isfinite(window_s) and window_s > 0.0):
            raise ValueError(f"window_s must be > 0, got {window_s}")
        if max_frames < 2:
            raise ValueError(f"max_frames must be >= 2, got {max_frames}")
        self._window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._in: deque[float] = deque(maxlen=max_frames)  # input arrival times
        # (output time s, latency s, unet ms or None, skipped)
        self._out: deque[tuple[float, float, float | None, bool]] = deque(maxlen=max_frames)
        self._dropped = 0
        self._frames = 0
        self._nvml: NvmlPower | None = None
        if power_fn is None:
            self._nvml = NvmlPower()
            power_fn = self._nvml.read
        self._power_fn = power_fn
        self._power_interval_s = power_interval_s
        self._power_lock = threading.Lock()
        self._power_w: float | None = None
        self._power_at = -math.inf
        self._power_errors = 0  # failed readings since start
        self._power_failing = False  # in a failure streak: the last reading failed
        self._source_state: Callable[[], str] | None = None
        self._tempo: Callable[[], dict[str, Any]] | None = None

    def set_tempo(self, tempo: Callable[[], dict[str, Any]] | None) -> None:
        """Where snapshot()'s bpm, beat, quantum and peers come from (engine/live/tempo.py)."""
        self._tempo = tempo

    def set_source_state(self, state: Callable[[], str] | None) -> None:
        """Where snapshot()["source"] comes from: the source worker's state (engine/live/io_threads.py), called on
        the reader's thread."""
        self._source_state = state

    def on_input_frame(self, now: float | None = None) -> None:
        """The source produced an input frame at `now` (defaults to the clock); any thread (the source's own)."""
        t = self._clock() if now is None else now
        with self._lock:
            self._in.append(t)

    def on_input_dropped(self, n: int = 1) -> None:
        """n input frames were dropped (overwritten in the latest-frame slot before the engine took them)."""
        if n < 0:
            raise ValueError(f"dropped frame count must be >= 0, got {n}")
        with self._lock:
            self._dropped += n

    def on_output_frame(self, capture_time: float, now: float, unet_ms: float | None, skipped: bool) -> None:
        """An output frame left the engine at `now` for an input captured at `capture_time` (seconds).

        unet_ms: UNet time for this frame, or None when not measured (or skipped).
        """
        with self._lock:
            self._out.append((now, now - capture_time, unet_ms, skipped))
            self._frames += 1

    def snapshot(self, now: float | None = None) -> Snapshot:
        """The current numbers (see the module docstring for keys); a fresh dict."""
        t = self._clock() if now is None else now
        with self._lock:
            ins = list(self._in)
            outs = list(self._out)
            dropped = self._dropped
            frames = self._frames
        start = t - self._window_s
        ins = [x for x in ins if x >= start]
        outs = [o for o in outs if o[0] >= start]
        lat_ms = sorted(o[1] * 1000.0 for o in outs)
        unet = [o[2] for o in outs if not o[3] and o[2] is not None]
        return {
            "fps_out": _rate([o[0] for o in outs]),
            "fps_in": _rate(ins),
            "latency_p50_ms": _percentile(lat_ms, 50.0),
            "latency_p95_ms": _percentile(lat_ms, 95.0),
            "unet_ms": sum(unet) / len(unet) if unet else None,
            "skip_rate": sum(1 for o in outs if o[3]) / len(outs) if outs else None,
            "dropped": dropped,
            "power_w": self._power(t),
            "power_errors": self._power_errors,
            "frames": frames,
            "source": None if self._source_state is None else self._source_state(),
            **({} if self._tempo is None else self._tempo()),
        }

    def close(self) -> None:
        """Release NVML (when this object opened it)."""
        if self._nvml is not None:
            with self._power_lock:
                self._nvml.close()

    def _power(self, now: float) -> float | None:
        with self._power_lock:
            if now - self._power_at >= self._power_interval_s:
                self._power_at = now
                try:
                    self._power_w = self._power_fn()
                except Exception as exc:  # NVMLError and friends: counted, never the end of the status feed
                    self._power_w = None
                    self._power_errors += 1
                    if not self._power_failing:
                        self._power_failing = True
                        logger.warning(
                            "reading GPU power failed: %s (power_w is none until a reading works; "
                            "power_errors counts the failures)",
                            _one_line(exc),
                        )
                else:
                    if self._power_failing:
                        self._power_failing = False
                        logger.info("reading GPU power works again after %d failure(s)", self._power_errors)
            return self._power_w


def _rate(times: Sequence[float]) -> float:
    """Events per second from ascending timestamps: (count - 1) / span."""
    if len(times) < 2 or times[-1] <= times[0]:
        return 0.0
    return (len(times) - 1) / (times[-1] - times[0])


def _percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """q-th percentile with linear interpolation between closest ranks (numpy's default); None when empty."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def status_line(snapshot: Snapshot) -> str:
    """One short line, e.g. 'out 29.8 fps | in 30.0 | lat 41/55 ms | unet 12.3 ms | skip 12% | drop 3 | 215 W'.
    Missing values (None or absent keys) print as '-'. A source that is not "ok" is named at the end
    ('... | - W | waiting for camera:0: no camera found'), so a still picture says why."""

    def num(key: str, fmt: str) -> str:
        v = snapshot.get(key)
        return "-" if v is None else format(v, fmt)

    skip = snapshot.get("skip_rate")
    skip_s = "-" if skip is None else f"{skip * 100.0:.0f}%"
    return (
        f"out {num('fps_out', '.1f')} fps | in {num('fps_in', '.1f')} | "
        f"lat {num('latency_p50_ms', '.0f')}/{num('latency_p95_ms', '.0f')} ms | unet {num('unet_ms', '.1f')} ms | "
        f"skip {skip_s} | drop {num('dropped', 'd')} | {num('power_w', '.0f')} W"
        + tempo_text(snapshot)
        + ("" if snapshot.get("source") in (None, "ok") else f" | {snapshot['source']}")
    )


def tempo_text(snapshot: Snapshot) -> str:
    """' | 128.0 bpm 3.2' (bar 3, beat 2, counted from 1), with ' 2 peers' on Link; '' without a tempo."""
    bpm, beat, quantum = snapshot.get("bpm"), snapshot.get("beat"), snapshot.get("quantum")
    if bpm is None or beat is None or not quantum:
        return ""
    whole = math.floor(beat)
    peers = snapshot.get("peers") or 0
    return f" | {bpm:.1f} bpm {whole // quantum + 1}.{whole % quantum + 1}" + (f" {peers} peers" if peers else "")


class StatusLinePrinter:
    """Shows status_line(metrics.snapshot()): rewrites one terminal line (\\r) at most every tty_interval_s when
    the stream is a TTY, else logs it at INFO every log_interval_s.

    Drive it with tick() from a loop you own, or start() a daemon thread that ticks; close() ends the line.
    """

    def __init__(
        self,
        metrics: EngineMetrics,
        stream: TextIO | None = None,
        tty_interval_s: float = 0.5,
        log_interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self._stream: TextIO = sys.stderr if stream is None else stream
        isatty = getattr(self._stream, "isatty", None)
        self._tty = bool(isatty()) if callable(isatty) else False
        self._interval_s = tty_interval_s if self._tty else log_interval_s
        self._clock = clock
        self._last = -math.inf
        self._width = 0  # length of the line on screen, to blank leftovers of a longer one
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def is_tty(self) -> bool:
        return self._tty

    def tick(self, now: float | None = None) -> bool:
        """Show the line if the interval has passed; returns whether it did."""
        t = self._clock() if now is None else now
        if t - self._last < self._interval_s:
            return False
        self._last = t
        line = status_line(self._metrics.snapshot())
        if self._tty:
            self._stream.write("\r" + line.ljust(self._width))
            self._stream.flush()
            self._width = len(line)
        else:
            logger.info("%s", line)
        return True

    def start(self) -> None:
        """Tick on a daemon thread until close()."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="dreamwire-status-line", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._tty and self._width:
            self._stream.write("\n")  # leave the last status on its own line
            self._stream.flush()
            self._width = 0

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s / 2.0):
            self.tick()
