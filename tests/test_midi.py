"""MIDI controllers and MIDI clock (issue 19): mido messages injected into the transport's port handler (no
hardware), over the real control surface and engine (tiny model), with OSC on a real UDP socket where a test
needs a second controller. Real virtual ports only where rtmidi has ALSA's sequencer; otherwise skipped with
the reason."""

# ruff: noqa: F811  (the `rig` fixture is imported from test_osc, and each test takes it by name)

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import mido
import pytest
from test_osc import NS, rig  # noqa: F401

from engine.control.midi import MidiTransport, find_port, midi_backend
from engine.control.midi_clock import MidiClock
from engine.control.midi_map import Mapping, MidiMap, load_map, save_map
from engine.core.errors import DreamwireError
from engine.live.beat_clock import BeatClock

ROOT = Path(__file__).resolve().parents[1]


def cc(number: int, value: int, channel: int = 0) -> mido.Message:
    return mido.Message("control_change", control=number, value=value, channel=channel)


def note(number: int, velocity: int = 100, channel: int = 0) -> mido.Message:
    return mido.Message("note_on", note=number, velocity=velocity, channel=channel)


def transport(r: Any, tmp_path: Path, *mappings: Mapping, **kwargs: Any) -> MidiTransport:
    file = tmp_path / "map.yaml"
    save_map(MidiMap(controls=list(mappings)), file)
    config = r.engine.preset.midi.model_copy(update={"input": "nanoKONTROL2"})
    midi = MidiTransport(r.surface.surface, config, str(file), backend=kwargs.pop("backend", FakeBackend()), **kwargs)
    r.surface.surface.add_outlet(midi._echo)  # as start() does, without the port thread
    r.surface.surface.midi = midi
    return midi


class FakePort:
    def __init__(self, name: str, callback: Any = None) -> None:
        self.name, self.callback, self.sent, self.closed = name, callback, [], False

    def send(self, message: Any) -> None:
        self.sent.append(message)

    def close(self) -> None:
        self.closed = True


class FakeBackend:
    """Ports that come and go by hand (a device plugged in and out)."""

    def __init__(self, names: list[str] | None = None) -> None:
        self.names = names or []
        self.inputs: list[FakePort] = []
        self.outputs: list[FakePort] = []

    def input_names(self) -> list[str]:
        return list(self.names)

    def output_names(self) -> list[str]:
        return list(self.names)

    def open_input(self, name: str, callback: Any) -> FakePort:
        self.inputs.append(FakePort(name, callback))
        return self.inputs[-1]

    def open_output(self, name: str) -> FakePort:
        self.outputs.append(FakePort(name))
        return self.outputs[-1]

    def message(self, kind: str, **fields: Any) -> mido.Message:
        return mido.Message(kind, **fields)


def test_cc_mapping_with_soft_takeover_picks_up_and_lets_go_when_another_controller_moves_the_value(rig, tmp_path):
    r = rig()
    midi = transport(r, tmp_path, Mapping(control="cc", number=0, address="/guidance", range=(0.0, 20.0)))
    assert r.engine.preset.prompt.guidance == 1.5  # a fader at 1.5 / 20 of its travel: about 9.5
    midi.on_message(cc(0, 100))  # far from the value: not picked up, nothing changes
    r.apply()
    assert r.engine.preset.prompt.guidance == 1.5
    midi.on_message(cc(0, 10))  # met it
    midi.on_message(cc(0, 100))  # and from now on it follows
    r.apply()
    assert r.engine.preset.prompt.guidance == pytest.approx(100 / 127 * 20)
    r.controller.send(f"{NS}/prompt/guidance", 5.0)  # another controller moves it
    assert r.controller.sync(r.feedback) == []
    r.apply()
    midi.on_message(cc(0, 110))  # still far from 5.0 (about 32): ignored
    r.apply()
    assert r.engine.preset.prompt.guidance == 5.0
    midi.on_message(cc(0, 20))  # crossed the value on the way down: picked up again
    r.apply()
    assert r.engine.preset.prompt.guidance == pytest.approx(20 / 127 * 20)


def test_exponential_curve_and_the_parameters_own_range_and_an_int_rounded(rig, tmp_path):
    r = rig()
    midi = transport(
        r,
        tmp_path,
        Mapping(control="cc", number=1, address="/prompt/delta", curve="exponential", takeover=False),
        Mapping(control="pitchbend", channel=2, address="/ssf/max_skip_frames", range=(0, 30), takeover=False),
    )
    midi.on_message(cc(1, 64))
    midi.on_message(mido.Message("pitchwheel", pitch=0, channel=1))  # the middle: 15
    midi.on_message(mido.Message("pitchwheel", pitch=8191, channel=0))  # channel 1: not this mapping
    r.apply()
    x = 64 / 127
    assert r.engine.preset.prompt.delta == pytest.approx(5.0 * (2.718281828 ** (4 * x) - 1) / (2.718281828**4 - 1))
    assert r.engine.preset.filter.max_skip_frames == 15


def test_toggles_triggers_and_enum_and_prompt_cycles(rig, tmp_path):
    r = rig()
    midi = transport(
        r,
        tmp_path,
        Mapping(control="note", number=40, address="/ssf", type="toggle"),
        Mapping(control="cc", number=41, address="/reset", type="trigger"),
        Mapping(control="note", number=42, address="/tempo/quantize", type="cycle"),
        Mapping(control="note", number=43, address="/prompt", type="cycle", values=["a forest", "a city at night"]),
    )
    events: list[Any] = []
    r.engine.add_listener(events.append)
    midi.on_message(note(40))
    midi.on_message(mido.Message("note_off", note=40))  # the release does nothing
    r.apply()
    assert r.engine.preset.filter.enabled is True
    midi.on_message(note(40))
    r.apply()
    assert r.engine.preset.filter.enabled is False
    midi.on_message(cc(41, 127))
    midi.on_message(cc(41, 0))  # a button's release
    r.apply()
    assert [e.path for e in events].count("reset") == 1
    for expected in ("beat", "bar", "2bars", "4bars", "none"):  # round the enum, back to the start
        midi.on_message(note(42))
        r.apply()
        assert r.engine.preset.tempo.quantize == expected
    midi.on_message(note(43))
    r.apply()
    assert r.engine.preset.prompt.text == "a forest"
    midi.on_message(note(43))
    r.apply()
    assert r.engine.preset.prompt.text == "a city at night"


def test_midi_learn_maps_the_next_control_saves_the_file_and_it_loads_back(rig, tmp_path):
    r = rig()
    midi = transport(r, tmp_path)
    r.controller.send(f"{NS}/midi/learn", "/prompt/delta")
    r.controller.send(f"{NS}/midi/learn", "/prompt/nothing")
    assert r.controller.sync(r.feedback) == [
        f"{NS}/midi/learn: unknown address (the address space: README, or GET / on the OSCQuery port)"
    ]
    midi.on_message(mido.Message("note_off", note=9))  # a release is no move
    midi.on_message(cc(7, 30, channel=1))  # the one that moves: learned, not applied
    assert r.feedback.wait(f"{NS}/midi/learn") == ["/prompt/delta", "cc 7 ch 2", "continuous"]
    learned = load_map(tmp_path / "map.yaml")
    assert [m.model_dump() for m in learned.controls] == [m.model_dump() for m in midi.map.controls]
    assert learned.controls[0].key() == ("cc", 2, 7)
    midi.on_message(cc(7, 25, channel=1))  # delta 1.0 of [0, 5]: position 25.4 → picked up
    midi.on_message(cc(7, 127, channel=1))
    r.apply()
    assert r.engine.preset.prompt.delta == 5.0
    with pytest.raises(DreamwireError, match="write a cycle mapping"):
        midi.learn("/prompt")


def test_a_bad_map_file_is_one_line_naming_the_key_and_value(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("controls:\n  - {control: cc, number: 1, address: /guidance, curve: cubic}\n", encoding="utf-8")
    with pytest.raises(DreamwireError, match=r"bad.yaml: controls.0.curve: 'cubic' is not accepted"):
        load_map(bad)
    bad.write_text("controls:\n  - {control: note, address: /reset}\n", encoding="utf-8")
    with pytest.raises(DreamwireError, match="needs a number"):
        load_map(bad)


def test_led_feedback_sends_the_value_back_as_a_cc(rig, tmp_path):
    r = rig()
    backend = FakeBackend(["nanoKONTROL2 SLIDER/KNOB"])
    midi = transport(
        r,
        tmp_path,
        Mapping(control="cc", number=16, address="/guidance", range=(0, 10), feedback=True),
        backend=backend,
    )
    midi.poll_ports()
    r.controller.send(f"{NS}/guidance", 5.0)
    assert r.controller.sync(r.feedback) == []
    r.apply()
    assert r.feedback.wait(f"{NS}/prompt/guidance") == [5.0]
    assert [(m.control, m.value) for m in backend.outputs[0].sent] == [(16, 64)]


def test_midi_clock_gives_a_smoothed_bpm_and_start_stop_continue():
    now = [0.0]
    clock = BeatClock(120.0, 4, lambda: now[0])
    midi_clock = MidiClock(clock)
    midi_clock.start()
    interval = 60.0 / 125.0 / 24  # 125 bpm
    for pulse in range(96):  # 4 beats, each pulse 1 ms late or early in turn
        now[0] = (pulse + 1) * interval + (0.001 if pulse % 2 else -0.001)
        midi_clock.pulse(now[0])
    assert midi_clock.bpm == pytest.approx(125.0, abs=0.5) and clock.bpm == pytest.approx(125.0, abs=0.5)
    assert clock.beat_at() == pytest.approx(4.0)
    midi_clock.stop()
    held = clock.beat_at()
    now[0] += 1.0
    midi_clock.pulse(now[0])  # pulses while stopped: the beat holds
    assert clock.beat_at() == held
    midi_clock.continue_()
    now[0] += interval
    midi_clock.pulse(now[0])
    assert clock.beat_at() == pytest.approx(held + 1 / 24)
    midi_clock.start()
    assert clock.beat_at() == 0.0


def test_clock_messages_reach_the_beat_clock_through_the_port_handler(rig, tmp_path):
    r = rig()
    midi = transport(r, tmp_path, midi_clock=MidiClock(r.engine.tempo.clock))
    midi.on_message(mido.Message("start"))
    for _ in range(48):
        midi.on_message(mido.Message("clock"))
    assert r.engine.tempo.clock.beat_at() >= 2.0


def test_a_device_missing_at_start_is_waited_for_and_an_unplugged_one_too_while_the_engine_renders(
    rig, tmp_path, caplog
):
    r = rig()
    backend = FakeBackend(["Midi Through Port-0"])
    midi = transport(r, tmp_path, Mapping(control="cc", number=0, address="/delta", takeover=False), backend=backend)
    midi.poll_s = 0.01
    r.start_rendering()
    with caplog.at_level(logging.WARNING, logger="engine.control.midi"):
        midi.start()
        deadline = time.perf_counter() + 10
        while not any("not found" in m for m in caplog.messages):
            assert time.perf_counter() < deadline
            time.sleep(0.01)
        r.wait_frames(3)
        assert r.engine.status()["midi_input"] == "waiting for 'nanoKONTROL2'"
        backend.names.append("nanoKONTROL2 MIDI 1")  # plugged in
        while midi.connected is None:
            assert time.perf_counter() < deadline
            time.sleep(0.01)
        backend.inputs[-1].callback(cc(0, 127))
        assert r.engine.status()["midi_input"] == "nanoKONTROL2 MIDI 1"
        backend.names.remove("nanoKONTROL2 MIDI 1")  # unplugged mid-show
        while midi.connected is not None:
            assert time.perf_counter() < deadline
            time.sleep(0.01)
        r.wait_frames(3)  # the engine renders on
        backend.names.append("nanoKONTROL2 MIDI 1")
        while midi.connected is None:
            assert time.perf_counter() < deadline
            time.sleep(0.01)
        time.sleep(0.05)  # several polls with the port there: no more warnings
    midi.close()
    assert "midi_input" not in r.engine.status()
    assert len(backend.inputs) == 2 and backend.inputs[0].closed and backend.inputs[1].closed
    warnings = [m for m in caplog.messages if "MIDI input" in m]
    assert len(warnings) == 2 and "not found" in warnings[0] and "unplugged" in warnings[1]
    r.wait_frames(1)
    assert r.engine.preset.prompt.delta == 5.0


def test_port_names_match_by_a_part_of_the_name():
    names = ["Midi Through:Midi Through Port-0 14:0", "nanoKONTROL2:nanoKONTROL2 MIDI 1 20:0"]
    assert find_port(names, "nanokontrol2") == names[1]
    assert find_port(names, "MIDImix") is None


def test_without_rtmidi_or_alsa_run_says_so_in_one_line_and_exits_2_only_when_midi_is_configured(tmp_path):
    fake = tmp_path / "rtmidi"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "raise ImportError('libasound.so.2: cannot open shared object file: No such file or directory')\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    command = [sys.executable, "-m", "engine.commands.cli", "run", "--preset", "offline-demo", "--duration", "0.1"]
    done = subprocess.run([*command, "--set", "midi.input=nano"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "python-rtmidi" in lines[0] and "libasound2" in lines[0] and "libasound.so.2" in lines[0]
    with pytest.raises(DreamwireError, match="ALSA"):
        sys.modules["rtmidi"] = None  # type: ignore[assignment]
        try:
            midi_backend()
        finally:
            del sys.modules["rtmidi"]


def _alsa_sequencer() -> str | None:
    """None when rtmidi can open ALSA's sequencer here; else why not."""
    try:
        midi_backend()
    except DreamwireError as error:
        return str(error)
    return None


def test_real_virtual_ports_carry_a_cc_to_the_engine(rig, tmp_path):
    reason = _alsa_sequencer()
    if reason is not None:
        print(f"skipped: no real MIDI ports here: {reason}")
        pytest.skip(f"no real MIDI ports here: {reason}")
    r = rig()
    backend = midi_backend()
    out = mido.open_output("dreamwire-test-controller", virtual=True)
    try:
        config = r.engine.preset.midi.model_copy(update={"input": "dreamwire-test-controller"})
        file = tmp_path / "map.yaml"
        save_map(MidiMap(controls=[Mapping(control="cc", number=3, address="/delta", takeover=False)]), file)
        midi = MidiTransport(r.surface.surface, config, str(file), backend=backend, poll_s=0.05).start()
        deadline = time.perf_counter() + 10
        while midi.connected is None:
            assert time.perf_counter() < deadline, "the virtual port was not found"
            time.sleep(0.02)
        done = threading.Event()
        r.engine.add_listener(lambda e: done.set() if e.path == "prompt.delta" else None)
        out.send(cc(3, 127))
        while not done.is_set():
            r.engine.apply_pending_controls()
            assert time.perf_counter() < deadline, "the CC did not arrive"
            time.sleep(0.01)
        assert r.engine.preset.prompt.delta == 5.0
        midi.close()
    finally:
        out.close()


def test_the_readme_nanokontrol2_example_loads_and_every_mapping_can_work(rig, tmp_path):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- midi-map-example -->\n```yaml\n", 1)[1].split("```", 1)[0]
    file = tmp_path / "nanokontrol2.yaml"
    file.write_text(block, encoding="utf-8")
    r = rig()
    config = r.engine.preset.midi.model_copy(update={"input": "nanoKONTROL2"})
    midi = MidiTransport(r.surface.surface, config, str(file), backend=FakeBackend())  # checks every mapping
    assert len(midi.map.controls) == 9
    midi.on_message(cc(42, 127))  # stop: /reset
    midi.on_message(cc(60, 127))  # marker set: the first prompt
    r.apply()
    assert r.engine.preset.prompt.text == "a forest at dawn"
