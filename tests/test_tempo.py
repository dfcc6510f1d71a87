"""Play it in time (issue 19): the beat clock, beat-quantised changes, beat-length transitions and the LFOs,
against a fake clock (time moved by hand), through the live engine on the tiny model and over real OSC."""

# ruff: noqa: F811  (the `rig` fixture is imported from test_osc, and each test takes it by name)

from __future__ import annotations

import math
import time

import pytest
from test_osc import NS, rig  # noqa: F401

from engine.control.midi_clock import MidiClock
from engine.core.errors import DreamwireError
from engine.live.beat_clock import BeatClock, TapTempo
from engine.live.loop import LiveEngine
from engine.live.metrics import status_line
from engine.live.modulators import Lfo, check_lfo, hold_random, modulated, wave

FRAME = 1 / 30  # s: the fake engine's frame period


class FakeTime:
    """A clock moved by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def fake_clock(live: LiveEngine, bpm: float = 120.0) -> FakeTime:
    """The engine's beat clock on a hand-moved time, at beat 0 now."""
    now = FakeTime()
    live.tempo.clock.now = now
    live.tempo.clock.follow(bpm=bpm, beat=0.0)
    return now


def set_now(live: LiveEngine, path: str, value: object) -> None:
    live.set(path, value)
    live.apply_pending_controls()


# ---- the clock ----------------------------------------------------------------------------------------------


def test_beat_clock_runs_at_its_tempo_keeps_the_beat_on_a_tempo_change_and_stops_and_continues():
    now = FakeTime()
    clock = BeatClock(120.0, 4, now)
    now.t += 1.5
    assert clock.beat_at() == pytest.approx(3.0)
    clock.set_bpm(60.0)  # no jump: beat 3 now, one beat a second from here
    assert clock.beat_at() == pytest.approx(3.0)
    now.t += 2.0
    assert clock.beat_at() == pytest.approx(5.0)
    clock.stop()
    now.t += 10.0
    assert clock.beat_at() == pytest.approx(5.0)
    clock.start(None)  # continue
    now.t += 1.0
    assert clock.beat_at() == pytest.approx(6.0)
    clock.start()  # start: beat 0
    assert clock.beat_at() == 0.0
    assert clock.next_boundary("bar") == 4.0 and clock.next_boundary("2bars") == 8.0
    assert clock.next_boundary("beat") == 1.0 and clock.next_boundary("none") is None


def test_a_set_tempo_reaches_the_listeners_but_a_followed_one_does_not():
    clock, told = BeatClock(), []
    clock.add_bpm_listener(told.append)
    clock.follow(bpm=100.0)  # from the source itself
    clock.set_bpm(140.0)  # asked for here
    assert told == [140.0]
    with pytest.raises(DreamwireError, match="bpm 5"):
        clock.set_bpm(5)


def test_tap_tempo_is_the_mean_interval_and_a_pause_starts_a_new_series():
    taps = TapTempo(reset_s=2.0)
    assert taps.tap(0.0) is None
    assert taps.tap(0.5) == pytest.approx(120.0)
    assert taps.tap(1.1) == pytest.approx(60 / 0.55)
    assert taps.tap(10.0) is None  # after a pause: a new series
    assert taps.tap(10.4) == pytest.approx(150.0)


# ---- quantised changes ------------------------------------------------------------------------------------------


def test_a_change_marked_next_bar_applies_at_the_first_frame_at_or_after_the_bar_minus_the_lookahead(engine):
    live = engine()
    now = fake_clock(live)  # 120 bpm: a beat is 0.5 s, a bar (quantum 4) 2 s
    set_now(live, "tempo.latency_ms", 100.0)
    start = now.t + 0.31  # beat 0.62; frames every 1/30 s from here (none lands on the bar line exactly)
    now.t = start
    live.set("prompt.guidance", 3.0, quantize="bar")
    due = live.tempo.clock.time_of(4.0) - 0.1  # the bar line minus the lookahead
    applied_at = None
    for frame in range(200):
        now.t = start + frame * FRAME
        live.apply_pending_controls()  # a frame boundary
        if live.pipeline.guidance == 3.0:
            applied_at = now.t
            break
        assert now.t < due, f"not applied at {now.t} (due {due})"
    assert applied_at is not None
    assert due <= applied_at < due + FRAME  # the first frame boundary at or after, not before
    assert live.preset.prompt.guidance == 3.0


def test_the_global_quantize_default_holds_every_change_to_the_next_beat_but_tempo_changes_apply_at_once(engine):
    live = engine()
    now = fake_clock(live)
    set_now(live, "tempo.quantize", "beat")
    now.t += 0.1  # beat 0.2
    live.set("prompt.delta", 0.5)
    set_now(live, "tempo.quantize", "none")  # not held itself, or quantising could never be turned off
    assert live.preset.tempo.quantize == "none"
    assert live.pipeline.delta != 0.5 and live.busy  # held for beat 1
    now.t += 0.3  # beat 0.8
    live.apply_pending_controls()
    assert live.pipeline.delta != 0.5
    now.t += 0.2  # beat 1.0
    live.apply_pending_controls()
    assert live.pipeline.delta == 0.5
    with pytest.raises(DreamwireError, match="quantize 'bars' is unknown"):
        live.set("prompt.delta", 0.7, quantize="bars")


def test_a_quantised_prompt_blend_and_seed_blend_wait_for_their_beat(engine):
    live = engine()
    now = fake_clock(live)
    noise = live.pipeline.noise.clone()
    live.blend_seeds([(5, 0.5), (6, 0.5)], quantize="2bars")
    live.apply_pending_controls()
    assert live.pipeline.noise.equal(noise) and len(live.tempo.quantiser) == 1
    now.t += 3.99  # 2 bars at 120 bpm: 4 s
    live.apply_pending_controls()
    assert live.pipeline.noise.equal(noise)
    now.t += 0.01
    live.apply_pending_controls()
    assert not live.pipeline.noise.equal(noise)


def test_transitions_take_beats_and_bars_in_beats(engine):
    live = engine()
    fake_clock(live, bpm=90.0)
    assert live.tempo.duration(None, None, beats=3).beats == 3.0
    assert live.tempo.duration(None, None, bars=1).beats == 4.0  # the quantum when it is sent
    with pytest.raises(DreamwireError, match=r"transition beats 9000 lasts 6000 s, over 3600 s"):
        live.tempo.duration(None, None, beats=9000)
    with pytest.raises(DreamwireError, match="one of seconds, frames, beats or bars"):
        live.set("prompt.guidance", 2.0, seconds=1.0, beats=2)
    live.set("prompt.guidance", 2.0, beats=2)
    live.apply_pending_controls()
    assert "guidance" in live.transitions


def test_a_beat_length_transition_keeps_its_beats_through_a_tempo_change_and_ends_on_the_beat_it_named(engine):
    live = engine()
    now = fake_clock(live)  # 120 bpm, beat 0 now
    live.set("prompt.delta", 3.0, beats=4)  # from 1.0: ends on beat 4
    live.apply_pending_controls()
    assert "delta" in live.transitions
    now.t = live.tempo.clock.time_of(2.0)  # half way: 1 s
    live.apply_pending_controls()
    assert live.pipeline.delta == pytest.approx(2.0)
    set_now(live, "tempo.bpm", 60.0)  # half the tempo: beat 4 is now 2 s away, not 1 s
    assert live.tempo.clock.beat_at() == pytest.approx(2.0)
    now.t += 1.0  # beat 3: still moving (at the tempo it was sent at, it would have ended here)
    live.apply_pending_controls()
    assert live.pipeline.delta == pytest.approx(2.5) and "delta" in live.transitions
    now.t += 0.99  # just before beat 4
    live.apply_pending_controls()
    assert live.pipeline.delta < 3.0 and "delta" in live.transitions
    now.t += 0.01  # beat 4: the end
    live.apply_pending_controls()
    assert live.pipeline.delta == 3.0 and "delta" not in live.transitions
    assert live.tempo.clock.beat_at() == pytest.approx(4.0)


# ---- LFOs -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["sine", "triangle", "saw", "square", "random"])
def test_an_lfo_over_a_bar_matches_its_formula_and_stays_in_range(engine, shape):
    live = engine()
    now = fake_clock(live)
    base = live.preset.prompt.guidance  # 1.5: a depth of 4 swings past 0, the parameter's minimum
    live.tempo.modulators.set(check_lfo("prompt.guidance", shape, 1.0, "beats", 4.0))
    formula = {
        "sine": lambda p, c: math.sin(2 * math.pi * p),
        "triangle": lambda p, c: 1 - 4 * abs(p - 0.5),
        "saw": lambda p, c: 2 * p - 1,
        "square": lambda p, c: 1.0 if p < 0.5 else -1.0,
        "random": lambda p, c: hold_random(c),
    }[shape]
    seen = []
    for step in range(48):  # a bar of 4 beats, 12 frames a beat
        beat = step / 12
        now.t = live.tempo.clock.time_of(beat)
        live.apply_pending_controls()
        expected = min(max(base + 4.0 * formula(beat % 1.0, math.floor(beat)), 0.0), 20.0)
        assert live.pipeline.guidance == pytest.approx(expected, abs=1e-9), (shape, beat)
        seen.append(live.pipeline.guidance)
    assert min(seen) >= 0.0 and max(seen) <= 20.0
    assert len(set(seen)) > 1  # it moved
    assert live.preset.prompt.guidance == base and live.controls.empty()  # not requests: the base stays in effect


def test_lfo_rates_in_bars_and_hz_and_an_int_parameter_rounded_and_clamped():
    sine = Lfo("prompt.guidance", "sine", 1.0, "bars", 1.0)
    assert modulated(sine, 1.5, beat=1.0, seconds=0.0, quantum=4) == pytest.approx(2.5)  # a quarter of a bar
    hz = Lfo("prompt.guidance", "saw", 2.0, "hz", 1.0)
    assert modulated(hz, 1.5, beat=0.0, seconds=0.125, quantum=4) == pytest.approx(1.5 - 0.5)
    skip = Lfo("filter.max_skip_frames", "square", 1.0, "beats", 30.0)
    assert modulated(skip, 10, beat=0.25, seconds=0.0, quantum=4) == 40.0
    assert modulated(skip, 10, beat=0.75, seconds=0.0, quantum=4) == 0.0  # clamped to its minimum
    assert wave("triangle", 0.25) == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("prompt.text", "sine", 1.0, "beats", 1.0), "not a live numeric parameter"),
        (("prompt.guidance", "wobble", 1.0, "beats", 1.0), "shape 'wobble'"),
        (("prompt.guidance", "sine", 0.1, "beats", 1.0), r"rate 0.1 beats is not in \[0.25, 64\]"),
        (("prompt.guidance", "sine", 1.0, "minutes", 1.0), "unit 'minutes'"),
        (("prompt.guidance", "sine", 1.0, "beats", 25.0), r"depth 25.0 for prompt.guidance is not in \[0, 20\]"),
    ],
)
def test_a_bad_lfo_is_one_line_naming_the_value(args, message):
    with pytest.raises(DreamwireError, match=message):
        check_lfo(*args)


def test_layered_lfos_on_one_parameter_add_up_before_the_clamp_and_a_layer_is_removed_alone(engine):
    live = engine()
    now = fake_clock(live)
    mods = live.tempo.modulators
    mods.set(check_lfo("prompt.delta", "square", 1.0, "beats", 0.5))
    mods.set(check_lfo("prompt.delta", "saw", 1.0, "bars", 1.0, layer=3))
    now.t = live.tempo.clock.time_of(2.0)  # square +1 (phase 0), saw at half a bar: 0
    live.apply_pending_controls()
    assert live.pipeline.delta == pytest.approx(1.0 + 0.5 + 0.0)
    now.t = live.tempo.clock.time_of(3.5)  # square -1, saw 2·(3.5/4) − 1 = 0.75
    live.apply_pending_controls()
    assert live.pipeline.delta == pytest.approx(1.0 - 0.5 + 0.75)
    assert len(mods) == 2 and mods.remove("prompt.delta", layer=3) and len(mods) == 1
    live.apply_pending_controls()
    assert live.pipeline.delta == pytest.approx(0.5)
    with pytest.raises(DreamwireError, match=r"layer 8 is not a whole number in \[0, 7\]"):
        check_lfo("prompt.delta", "sine", 1.0, "beats", 0.5, layer=8)


def test_a_removed_lfo_puts_the_value_in_effect_back(engine):
    live = engine()
    now = fake_clock(live)
    live.tempo.modulators.set(check_lfo("prompt.delta", "square", 1.0, "beats", 0.5))
    now.t += 0.1
    live.apply_pending_controls()
    assert live.pipeline.delta == pytest.approx(1.5)
    assert live.tempo.modulators.remove("prompt.delta") and not live.tempo.modulators.remove("prompt.delta")
    live.apply_pending_controls()
    assert live.pipeline.delta == live.preset.prompt.delta == 1.0


# ---- over OSC ----------------------------------------------------------------------------------------------------


def test_tempo_lfo_and_beat_transitions_over_osc_and_the_status_addresses(rig):
    r = rig()
    r.controller.send(f"{NS}/tempo/bpm", 128.0)
    r.controller.send(f"{NS}/tempo/beat", 7.0)
    r.controller.send(f"{NS}/lfo", "/guidance", "triangle", 2.0, "beats", 1.0)
    r.controller.send(f"{NS}/lfo", "/guidance", "triangle", 2.0, "weeks", 1.0)
    r.controller.send(f"{NS}/transition/bars", 2.0)
    errors = r.controller.sync(r.feedback)
    assert errors == [f"{NS}/lfo: LFO rate unit 'weeks' is unknown (allowed: beats, bars, hz)"]
    r.apply()
    clock = r.engine.tempo.clock
    assert clock.bpm == 128.0 and 7.0 <= clock.beat_at() < 9.0
    assert r.engine.tempo.modulators.running["prompt.guidance"][0].shape == "triangle"
    assert r.surface.surface.transition.kwargs() == {"seconds": None, "frames": None, "bars": 2.0}
    status = {address: args for address, args in r.surface.surface.status_messages()}
    assert status[f"{NS}/status/bpm"] == [128.0] and status[f"{NS}/status/peers"] == [0]
    assert status[f"{NS}/status/beat"][0] >= 7.0
    r.controller.send(f"{NS}/lfo/remove", "/prompt/guidance")
    r.controller.send(f"{NS}/lfo/remove", "/prompt/guidance")
    assert r.controller.sync(r.feedback) == [f"{NS}/lfo/remove: prompt.guidance has no LFO"]


def test_get_tempo_bpm_over_udp_answers_the_live_tempo_of_the_source_not_the_last_value_set(rig):
    r = rig()
    assert r.get(f"{NS}/tempo/bpm") == [120.0]
    clock = r.engine.tempo.clock
    pulses = MidiClock(clock)  # tempo.source midi_clock: 24 pulses a beat at 100 bpm
    for pulse in range(25):
        pulses.pulse(1000.0 + pulse * 60.0 / 100.0 / 24)
    assert r.get(f"{NS}/tempo/bpm") == [100.0] and r.get("/tempo/bpm") == [100.0]
    clock.follow(bpm=133.25)  # a Link session's tempo
    assert r.get(f"{NS}/tempo/bpm") == [133.25]
    assert r.engine.preset.tempo.bpm == 120.0  # the last value set is still the preset's
    r.controller.send(f"{NS}/tempo/bpm", 90.0)  # a tempo set here is the live one until a source moves it
    assert r.controller.sync(r.feedback) == []
    r.apply()
    assert r.get(f"{NS}/tempo/bpm") == [90.0]


def test_tap_tempo_over_osc_sets_the_bpm(rig):
    r = rig()
    clock = r.engine.tempo.clock
    now = FakeTime()
    clock.now = now
    for _ in range(4):
        r.controller.send(f"{NS}/tempo/tap")
        assert r.controller.sync(r.feedback) == []
        now.t += 0.4  # 150 bpm
    r.apply()
    assert r.engine.preset.tempo.bpm == pytest.approx(150.0)
    assert clock.bpm == pytest.approx(150.0)


def test_the_status_line_shows_the_tempo_bar_and_beat(engine):
    live = engine()
    now = fake_clock(live)
    now.t += 2.75  # beat 5.5: bar 2, its beat 2
    assert status_line(live.metrics.snapshot()).endswith("| 120.0 bpm 2.2")
    live.tempo.clock.peers = 3
    assert status_line(live.status()).endswith("| 120.0 bpm 2.2 3 peers")


def test_a_quantised_change_due_during_a_rebuild_waits_for_the_new_pipeline(engine):
    live = engine()
    now = fake_clock(live)
    live.set("prompt.guidance", 4.0, quantize="beat")
    live.apply_pending_controls()  # held for beat 1
    live.set("stream.width", 96)  # a rebuild, running when the beat comes
    live.apply_pending_controls()
    assert live.rebuilding
    now.t += 0.5  # beat 1
    live.apply_pending_controls()
    if live.rebuilding:  # the tiny model may finish first; while it builds, the old pipeline is left alone
        assert live.pipeline.guidance != 4.0
    deadline = time.perf_counter() + 60
    while live.preset.prompt.guidance != 4.0:
        assert time.perf_counter() < deadline, "the quantised change was lost"
        live.apply_pending_controls()
        time.sleep(0.01)
    assert live.pipeline.guidance == 4.0 and live.preset.stream.width == 96
