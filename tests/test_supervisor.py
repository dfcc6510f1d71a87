"""The thread supervisor: a death is logged once per streak with its traceback, restarted with backoff, counted;
stop() returns promptly and supervised threads never hold the process."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time

from engine.core.supervisor import Supervisor


def test_a_dying_thread_is_logged_once_per_streak_restarted_and_counted(caplog):
    supervisor = Supervisor()
    calls = []
    recovered = threading.Event()

    def target(stop: threading.Event) -> None:
        calls.append(1)
        if len(calls) <= 3:
            raise ValueError(f"read number {len(calls)} failed")
        recovered.set()
        stop.wait()

    with caplog.at_level(logging.DEBUG, logger="engine.core.supervisor"):
        thread = supervisor.spawn("test-grabber", target, backoff_start=0.01, backoff_max=0.02)
        assert recovered.wait(5)
        snapshot = supervisor.snapshot()
        assert thread.stop(timeout=2)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]  # one line for the streak of three
    assert "read number 1 failed" in errors[0].getMessage() and errors[0].exc_info is not None
    assert snapshot["thread_deaths"] == 3 and snapshot["thread_restarts"] == 3
    assert snapshot["last_thread_error"] == "test-grabber: ValueError: read number 3 failed"
    assert snapshot["threads_failing"] == ["test-grabber"]  # the healthy run has not lasted 5 s yet
    assert supervisor.snapshot()["thread_restarts"] == 3  # kept after the thread finished


def test_a_new_streak_logs_again(caplog):
    supervisor = Supervisor()
    calls = []
    done = threading.Event()

    def target(stop: threading.Event) -> None:
        calls.append(1)
        if len(calls) in (1, 3):
            if len(calls) == 3:
                done.set()
            raise RuntimeError(f"death {len(calls)}")
        stop.wait(0.05)  # a healthy run (longer than healthy_after) that then dies on its next start
        raise RuntimeError(f"death {len(calls)}")

    with caplog.at_level(logging.ERROR, logger="engine.core.supervisor"):
        thread = supervisor.spawn("t", target, backoff_start=0.001, backoff_max=0.001, healthy_after=0.04)
        assert done.wait(5)
        thread.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert any("death 1" in m for m in messages) and any("death 2" in m for m in messages)
    assert not any("death 3" in m for m in messages)  # same streak as death 2: counted, not logged


def test_no_restart_and_a_returning_target_end_the_thread():
    supervisor = Supervisor()
    thread = supervisor.spawn("once", lambda stop: (_ for _ in ()).throw(OSError("gone")), restart=False)
    thread._thread.join(2)
    assert not thread.alive and thread.deaths == 1 and thread.restarts == 0
    finished = supervisor.spawn("returns", lambda stop: None)
    finished._thread.join(2)
    assert not finished.alive and finished.deaths == 0


def test_stop_interrupts_the_backoff():
    supervisor = Supervisor()
    thread = supervisor.spawn("fails", lambda stop: (_ for _ in ()).throw(OSError("x")), backoff_start=30)
    while thread.deaths == 0:
        time.sleep(0.001)
    started = time.monotonic()
    assert thread.stop(timeout=2)
    assert time.monotonic() - started < 1


def test_a_supervised_thread_never_holds_the_process():
    code = (
        "import threading, time\n"
        "from engine.core.supervisor import spawn\n"
        "spawn('stuck', lambda stop: time.sleep(30))\n"  # a build that cannot be interrupted
        "time.sleep(0.1)\n"
    )
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", code], check=True, timeout=20)
    assert time.monotonic() - started < 10
