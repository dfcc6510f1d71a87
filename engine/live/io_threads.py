"""One thread per bridge: a SourceWorker feeds a latest-frame slot, a SinkWorker drains one.

The bridge is only ever touched from its worker thread (open, read/write, close), which platform bridges need
(Spout's GL context is per thread). A failing bridge never stops the engine: the error is logged once per streak,
the bridge is closed and re-opened with exponential backoff, and the counters say what happened. The thread itself
runs under the supervisor (engine/core/supervisor.py): a bug that escapes the worker's own handling (not a bridge
error) is logged with its traceback, counted, and the worker restarts with backoff.

The source worker stamps every frame on its own thread when the source produced it (`on_frame(stamp)`, seconds
of time.perf_counter()), so the input rate is measured where frames are made, not where the engine takes them.

Engine loop sketch:
    src_slot, out_slot = LatestFrameSlot[Frame](), LatestFrameSlot[Frame]()
    source, sink = SourceWorker(open_source(uri_in), src_slot), SinkWorker(open_sink(uri_out), out_slot)
    source.start(); sink.start()
    while not source.finished.is_set():
        frame = src_slot.get(timeout=0.1)
        if frame is not None:
            out_slot.put(Frame(step(frame.image), frame.index, frame.capture_time))
    source.stop(); sink.stop()
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from bridges.base import Sink, Source
from bridges.pacing import paced_by_reader
from bridges.pixels import FrameConformer
from engine.core.errors import DreamwireError
from engine.core.frames import Frame
from engine.core.slot import LatestFrameSlot
from engine.core.supervisor import SupervisedThread, Supervisor, default_supervisor, one_line

log = logging.getLogger(__name__)

STOP_POLL = 0.1  # s: how often a source waiting for its reader looks at stop()


class _BridgeWorker:
    """The retry machinery shared by both workers; subclasses implement _step()."""

    kind = "bridge"

    def __init__(
        self,
        bridge: Source | Sink,
        backoff_start: float = 0.1,
        backoff_max: float = 5.0,
        supervisor: Supervisor | None = None,
    ) -> None:
        self._bridge = bridge
        self._backoff_start, self._backoff_max = backoff_start, backoff_max  # seconds
        self._delay = backoff_start
        self._frames = self._errors = self._restarts = 0
        self._streak = 0  # consecutive failures since the last frame that went through
        self.last_error: str | None = None  # "open failed: DreamwireError: ..." of the newest bridge failure
        self._opened = False
        self._op = "open"  # what the bridge was doing, for the log line
        self._stopping = threading.Event()
        self._supervisor = supervisor  # None: the process-wide one, looked up at start()
        self._thread: SupervisedThread | None = None

    @property
    def frames(self) -> int:
        """Frames read (source) or written (sink)."""
        return self._frames

    @property
    def errors(self) -> int:
        """Exceptions raised by the bridge's open/read/write."""
        return self._errors

    @property
    def restarts(self) -> int:
        """Re-open attempts after a failure."""
        return self._restarts

    @property
    def failing(self) -> bool:
        """True while the bridge is in a failure streak (no frame has gone through since the last error)."""
        return self._streak > 0

    @property
    def name(self) -> str:
        """The bridge's name (a URI-like text: camera:0, file:take1.mp4, ...)."""
        return self._bridge.name

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.alive

    @property
    def thread_deaths(self) -> int:
        """Times the worker's thread died of an exception its own handling did not catch (a bug; restarted)."""
        return 0 if self._thread is None else self._thread.deaths

    def start(self) -> None:
        """Start the thread under the supervisor (once per worker)."""
        if self._thread is not None or self._stopping.is_set():
            return
        supervisor = self._supervisor or default_supervisor()
        self._thread = supervisor.spawn(f"dreamwire-{self.kind}-{self._bridge.name}", self._run)

    def stop(self, timeout: float = 2.0) -> bool:
        """Ask the thread to finish, which closes the bridge (files are complete); wait up to `timeout` s.

        Returns False (and warns) if the thread is still blocked in the bridge after the timeout.
        """
        self._stopping.set()
        if self._thread is None or self._thread.stop(timeout):
            return True
        log.warning("%s %s: did not stop within %.1f s (blocked in %s)", self.kind, self.name, timeout, self._op)
        return False

    def _step(self) -> bool:
        """Move one frame; False ends the thread. Raises whatever the bridge raises."""
        raise NotImplementedError

    def _before_close(self) -> None:
        """Last chance to use the open bridge when stopping (the sink writes its last frame)."""

    def _run(self, stop: threading.Event) -> None:
        """The supervised target; `stop` is the supervisor's own event, set by stop() along with ours."""
        try:
            while not self._stopping.is_set():
                try:
                    if not self._opened:
                        self._op = "open"
                        if self._streak:
                            self._restarts += 1
                        self._bridge.open()
                        self._opened = True
                    if not self._step():
                        break
                except Exception as e:  # any bridge failure: log once per streak, close, back off, re-open
                    self._failed(e)
            if self._opened:
                self._before_close()
        finally:
            if self._opened:
                self._close_bridge(final=True)

    def _succeeded(self) -> None:
        self._frames += 1
        if self._streak:
            log.info("%s %s: recovered after %d error(s)", self.kind, self._bridge.name, self._streak)
            self._streak = 0
            self._delay = self._backoff_start

    def _failed(self, error: Exception) -> None:
        self._errors += 1
        self.last_error = _reason(error)
        if not self._streak:
            message = str(error).strip().splitlines()[0] if str(error).strip() else ""
            log.warning(
                "%s %s: %s failed (%s: %s); closing it and retrying with backoff",
                self.kind,
                self._bridge.name,
                self._op,
                type(error).__name__,
                message,
            )
            log.debug("%s %s: %s traceback", self.kind, self._bridge.name, self._op, exc_info=error)
        self._streak += 1
        self._close_bridge()
        self._stopping.wait(self._delay)  # stop() interrupts the backoff
        self._delay = min(self._delay * 2.0, self._backoff_max)

    def _close_bridge(self, final: bool = False) -> None:
        """Close even after a failed open() (it may have half-succeeded); bridges make close() idempotent."""
        self._opened = False
        try:
            self._bridge.close()
        except Exception as e:  # a failing close must not kill the worker; the next open() starts fresh
            level = logging.WARNING if final else logging.DEBUG  # final: a file may be incomplete, say so
            log.log(level, "%s %s: close failed (%s: %s)", self.kind, self._bridge.name, type(e).__name__, e)


class SourceWorker(_BridgeWorker):
    """Reads `source` in its own thread and puts every frame in `slot` (latest wins).

    `finished` is set when the source reports the end of its stream (read() returned None); the thread then ends.
    Every frame passes `conform` first (default: a check that converts to (H, W, 3) uint8 RGB): a frame it cannot
    convert is dropped (one log line per streak), so nothing malformed reaches the engine. `on_frame(stamp)` is
    called on this thread for every frame the source produced (stamp: time.perf_counter() seconds as read()
    returned it), before the engine sees it: the input rate counts frames where they are made.
    """

    kind = "source"

    def __init__(
        self,
        source: Source,
        slot: LatestFrameSlot[Frame],
        backoff_start: float = 0.1,
        backoff_max: float = 5.0,
        conform: FrameConformer | None = None,
        on_frame: Callable[[float], None] | None = None,
        supervisor: Supervisor | None = None,
        derive: Callable[[np.ndarray], dict[int, np.ndarray] | None] | None = None,
    ) -> None:
        super().__init__(source, backoff_start, backoff_max, supervisor)
        self._source = source
        self._slot = slot
        self.conform = conform or FrameConformer(f"source {source.name}")
        self._on_frame = on_frame or _ignore
        self._derive = derive  # the conformed frame → control images made on this thread (source_controls.py)
        self.finished = threading.Event()
        self._paced_by_reader = paced_by_reader(source)

    @property
    def state(self) -> str:
        """What the source is doing, for status(): "ok", "ended", "waiting for NAME: reason" (no frame yet) or
        "lost NAME: reason" (frames came, then it failed)."""
        if self.finished.is_set():
            return "ended"
        if self._frames and not self._streak:
            return "ok"
        reason = f": {self.last_error}" if self.last_error else ""
        return f"{'lost' if self._frames else 'waiting for'} {self._source.name}{reason}"

    def _step(self) -> bool:
        if self._paced_by_reader and not self._slot.wait_read(timeout=STOP_POLL):
            return True  # nobody read the last frame yet: look at stop() again, then wait on
        self._op = "read"
        frame = self._source.read()
        if frame is None:
            log.info("source %s: end of stream after %d frames", self._source.name, self._frames)
            self.finished.set()
            return False
        self._on_frame(time.perf_counter())  # stamped here, on the source's thread, as the frame is produced
        image = self.conform(frame.image)
        if image is not None:
            controls = self._derive(image) if self._derive is not None else None
            same = image is frame.image and controls is None
            self._slot.put(frame if same else Frame(image, frame.index, frame.capture_time, controls))
        self._succeeded()
        return True


class SinkWorker(_BridgeWorker):
    """Takes the newest frame from `slot` and writes it to `sink` in its own thread; a slow sink drops, never lags.

    set_status(text) (any thread) hands a status line to a sink that shows text (the preview page); this thread
    passes it on, so every call into the sink comes from this one thread.
    """

    kind = "sink"

    def __init__(
        self,
        sink: Sink,
        slot: LatestFrameSlot[Frame],
        backoff_start: float = 0.1,
        backoff_max: float = 5.0,
        supervisor: Supervisor | None = None,
    ) -> None:
        super().__init__(sink, backoff_start, backoff_max, supervisor)
        self._sink = sink
        self._slot = slot
        self._status: str | None = None  # the newest status line (a str swapped whole: no lock needed)
        self._status_shown: str | None = None

    def set_status(self, text: str) -> None:
        """Queue a status line for the sink (ignored by sinks without set_status); it arrives within 0.1 s."""
        self._status = text

    def _step(self) -> bool:
        frame = self._slot.get(timeout=0.1)  # seconds: bounds how long stop() waits for this thread
        status = self._status
        if status is not self._status_shown and hasattr(self._sink, "set_status"):
            self._status_shown = status
            self._sink.set_status(status)
        if frame is not None:
            self._write(frame)
        return True

    def _write(self, frame: Frame) -> None:
        self._op = "write"
        self._sink.write(frame)
        self._succeeded()

    def _before_close(self) -> None:
        frame = self._slot.get(timeout=0)  # a frame put just before stop() still reaches the file
        if frame is None:
            return
        try:
            self._write(frame)
        except Exception as e:  # stopping anyway: report, then close
            self._errors += 1
            log.warning("sink %s: last write failed (%s: %s)", self._sink.name, type(e).__name__, e)


def _ignore(stamp: float) -> None:
    """No input-rate hook."""


def _reason(error: Exception) -> str:
    """A bridge failure as one line for status() and the placeholder: our own errors by their message alone."""
    text = one_line(error)
    prefix = f"{type(error).__name__}: "
    return text[len(prefix) :] if isinstance(error, DreamwireError) and text.startswith(prefix) else text
