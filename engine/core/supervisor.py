"""One supervisor for every thread the engine starts: a thread that dies is logged (through `logging`, with its
traceback) once per failure streak, restarted with backoff and counted, so a crash is never silent and never
the end of the show.

    thread = spawn("dreamwire-camera-grabber", grab_frames)  # grab_frames(stop: threading.Event) -> None
    ...
    thread.stop(timeout=2.0)

A target runs as `target(stop)`: it should return once `stop` is set. Returning ends the thread (no restart);
raising is a death: the exception is logged, counted, and the target is called again after a backoff of 0.1 s
doubling to 5 s (interrupted by `stop`). A failure streak ends when a run lasts `healthy_after` seconds, so a
thread that fails on every start logs one line, not one a restart; the next streak logs again.

Every supervised thread is a daemon: the process never waits for one at exit (a model load or a compile that
can't be interrupted is abandoned). `snapshot()` gives the numbers for status(): restarts, the threads in a
failure streak and the newest cause. The process-wide `default_supervisor()` serves the engine and the bridges
alike (bridges may use engine/core); tests make their own `Supervisor`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Target = Callable[[threading.Event], None]


class SupervisedThread:
    """One supervised daemon thread; see the module docstring."""

    def __init__(
        self,
        supervisor: Supervisor,
        name: str,
        target: Target,
        restart: bool = True,
        backoff_start: float = 0.1,
        backoff_max: float = 5.0,
        healthy_after: float = 5.0,
    ) -> None:
        self.name = name
        self._supervisor, self._target, self._restart = supervisor, target, restart
        self._backoff_start, self._backoff_max, self._healthy_after = backoff_start, backoff_max, healthy_after  # s
        self.stopping = threading.Event()
        self.deaths = 0  # exceptions that escaped the target
        self.restarts = 0
        self.last_error: str | None = None  # "ValueError: ..." of the newest death
        self.failing = False  # in a failure streak: the last run died and no run since has lasted healthy_after
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> SupervisedThread:
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 2.0) -> bool:
        """Ask the target to return and wait up to `timeout` s; False when it is still running (abandoned: it is
        a daemon, so it cannot hold the process)."""
        self.stopping.set()
        if self._thread is threading.current_thread() or not self._thread.is_alive():
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        delay = self._backoff_start
        try:
            while not self.stopping.is_set():
                started = time.monotonic()
                try:
                    self._target(self.stopping)
                    return  # a target that returns is done
                except Exception as error:  # a death: logged with its cause, counted, restarted
                    ran = time.monotonic() - started
                    if ran >= self._healthy_after:
                        self.failing, delay = False, self._backoff_start  # the earlier streak had ended
                    self._died(error)
                if not self._restart or self.stopping.wait(delay):
                    return
                delay = min(delay * 2, self._backoff_max)
                self.restarts += 1
        finally:
            self._supervisor._finished(self)

    def _died(self, error: Exception) -> None:
        self.deaths += 1
        self.last_error = one_line(error)
        if not self.failing:  # the first death of a streak: the whole traceback, once
            log.error(
                "thread %s died: %s (%s)",
                self.name,
                self.last_error,
                "restarting with backoff" if self._restart else "not restarted",
                exc_info=error,
            )
        else:
            log.debug("thread %s died again: %s", self.name, self.last_error)
        self.failing = True
        self._supervisor._died(self)


class Supervisor:
    """Starts supervised threads and counts what happened to them, for status()."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: list[SupervisedThread] = []
        self._deaths = 0
        self._restarts_before = 0  # restarts of threads that have finished
        self._last_error: str | None = None

    def spawn(
        self,
        name: str,
        target: Target,
        restart: bool = True,
        backoff_start: float = 0.1,
        backoff_max: float = 5.0,
        healthy_after: float = 5.0,
    ) -> SupervisedThread:
        """Start `target(stop)` on a supervised daemon thread named `name`."""
        thread = SupervisedThread(self, name, target, restart, backoff_start, backoff_max, healthy_after)
        with self._lock:
            self._threads.append(thread)
        return thread.start()

    def snapshot(self) -> dict[str, Any]:
        """thread_deaths, thread_restarts, threads_failing (names), last_thread_error ("name: cause")."""
        with self._lock:
            threads = list(self._threads)
            return {
                "thread_deaths": self._deaths,
                "thread_restarts": self._restarts_before + sum(t.restarts for t in threads),
                "threads_failing": [t.name for t in threads if t.failing],
                "last_thread_error": self._last_error,
            }

    def _died(self, thread: SupervisedThread) -> None:
        with self._lock:
            self._deaths += 1
            self._last_error = f"{thread.name}: {thread.last_error}"

    def _finished(self, thread: SupervisedThread) -> None:
        with self._lock:
            if thread in self._threads:
                self._threads.remove(thread)
                self._restarts_before += thread.restarts


_default: Supervisor | None = None
_default_lock = threading.Lock()


def default_supervisor() -> Supervisor:
    """The process-wide supervisor (made on first use: no import-time side effects)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Supervisor()
        return _default


def spawn(name: str, target: Target, restart: bool = True, **backoff: float) -> SupervisedThread:
    """Start `target(stop)` under the process-wide supervisor."""
    return default_supervisor().spawn(name, target, restart, **backoff)


def one_line(error: BaseException) -> str:
    """An exception as one line: its type and message, whitespace collapsed."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
