"""The control surface as every transport sees it: one way in (`handle`), one way out (outlets), the same messages
to the OSC feedback socket and to any other outlet; the OSC threads under the supervisor; feedback failures
counted and warned once per streak; the status addresses for the source and the supervisor."""

# ruff: noqa: F811  (the `rig` fixture is imported from test_osc, and each test takes it by name)

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
from test_osc import NS, rig  # noqa: F401

from engine.control.commands import COMMANDS
from engine.control.routes import routes
from engine.control.surface import ControlSurface
from engine.core.supervisor import SupervisedThread, default_supervisor


def test_a_second_transport_is_handle_plus_an_outlet_and_sees_what_osc_sees(rig):
    r = rig()
    received: list[tuple[str, list[Any]]] = []
    r.surface.surface.add_outlet(lambda address, args: received.append((address, args)))
    r.surface.surface.handle("/guidance", [2.5], ("midi", 0))  # as a MIDI fader mapped to guidance would
    r.surface.surface.handle("/guidance", [99.0], None)
    r.apply()
    assert r.feedback.wait(f"{NS}/error")[0].startswith("/guidance: prompt.guidance: 99.0")
    assert r.feedback.wait(f"{NS}/prompt/guidance") == [2.5]
    assert (f"{NS}/prompt/guidance", [2.5]) in received
    assert any(address == f"{NS}/error" and "99.0" in args[0] for address, args in received)


def test_one_surface_per_engine_and_one_transition_for_every_transport(rig):
    r = rig()
    other = ControlSurface.of(r.engine, r.engine.preset.osc)  # what a second transport (MIDI, the page) takes
    assert other is r.surface.surface
    r.controller.send("/transition", 0.5)  # from OSC
    assert r.controller.sync(r.feedback) == []
    other.handle("/guidance", [3.0])  # from the other transport: timed by the same transition
    r.apply()
    assert "guidance" in r.engine.transitions


def test_every_command_is_routed_and_documented_once():
    table = routes()
    for command in COMMANDS:
        assert table[command.address].command is command
        assert command.doc and command.handler
    assert len({c.name for c in COMMANDS}) == len(COMMANDS)


def test_osc_server_and_feedback_threads_run_under_the_supervisor(rig, caplog):
    r = rig()
    assert isinstance(r.surface.server._serving._thread, SupervisedThread)
    feedback = r.surface.feedback
    assert isinstance(feedback._thread, SupervisedThread)
    before = default_supervisor().snapshot()["thread_restarts"]
    real_send, calls = feedback._send, []

    def dies_once(address: str, args: Any) -> None:
        calls.append(address)
        if len(calls) == 1:
            raise RuntimeError("a bug in the feedback sender")
        real_send(address, args)

    feedback._send = dies_once
    with caplog.at_level(logging.ERROR, logger="engine.core.supervisor"):
        r.controller.send("/get", "/guidance")  # dies on this answer
        deadline = time.perf_counter() + 10
        while default_supervisor().snapshot()["thread_restarts"] == before:
            assert time.perf_counter() < deadline, "the feedback thread was not restarted"
            time.sleep(0.01)
    assert any("dreamwire-osc-feedback died: RuntimeError" in rec.getMessage() for rec in caplog.records)
    r.controller.send("/get", "/guidance")
    assert r.feedback.wait(f"{NS}/prompt/guidance") == [1.5]  # restarted: the next answer arrives


def test_feedback_send_failures_are_counted_warned_once_per_streak_and_in_the_status(rig, caplog):
    r = rig()
    feedback = r.surface.feedback
    with caplog.at_level(logging.WARNING, logger="bridges.osc_feedback"):
        for _ in range(5):
            feedback.send(f"{NS}/bad", object())  # a value OSC cannot carry: the send fails
        feedback.send(f"{NS}/good", 1)
        for _ in range(3):
            feedback.send(f"{NS}/bad", object())
        feedback.send(f"{NS}/done", 1)
        assert r.feedback.wait(f"{NS}/done") == [1]  # every send above was tried
        r.controller.send("/status")
        failed = r.feedback.wait(f"{NS}/status/feedback_failed")
    assert r.feedback.wait(f"{NS}/good") == [1]
    assert failed == [8] and r.engine.status()["osc_feedback_failed"] == 8
    warnings = [rec for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(warnings) == 2, [rec.getMessage() for rec in warnings]  # one per streak
    assert "127.0.0.1" in warnings[0].getMessage() and f"{NS}/bad" in warnings[0].getMessage()


def test_status_burst_names_the_source_state_and_the_supervisor_numbers(rig):
    r = rig()
    r.engine.status_sources.append(lambda: {"source": "waiting for camera:0: no camera found"})
    stop = threading.Event()

    def fails(stop_event: threading.Event) -> None:
        raise OSError("no such device")

    thread = default_supervisor().spawn("test-failing-grabber", fails, backoff_start=5.0)
    try:
        r.controller.send("/status")
        assert r.feedback.wait(f"{NS}/status/source") == ["waiting for camera:0: no camera found"]
        assert isinstance(r.feedback.wait(f"{NS}/status/thread_restarts")[0], int)
        assert "test-failing-grabber" in r.feedback.wait(f"{NS}/status/threads_failing")[0]
        assert r.feedback.wait(f"{NS}/status/thread_error")[0].startswith("test-failing-grabber: OSError")
    finally:
        stop.set()
        thread.stop()


@pytest.mark.parametrize("address", ["/status/source", "/status/thread_restarts", "/status/feedback_failed"])
def test_status_addresses_are_in_oscquery(rig, address):
    import json
    import urllib.request

    r = rig()
    with urllib.request.urlopen(f"{r.http}{NS}{address}", timeout=10) as response:
        node = json.load(response)
    assert node["ACCESS"] == 1 and node["TYPE"] in ("i", "s")
