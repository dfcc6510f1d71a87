"""LFOs on any live number (issue 19): the set is read off the registry, ControlNet scales and strength move over
frames within their range and without a rebuild, and numbers that would need one are refused in one line."""

# ruff: noqa: F811  (the `rig` fixture is imported from test_osc, and each test takes it by name)

from __future__ import annotations

import math
from itertools import pairwise

import pytest
from test_controlnet_control import TINY_NET, with_controlnets
from test_osc import NS, rig  # noqa: F401
from test_tempo import FakeTime

from engine.config.registry import registry
from engine.core.errors import DreamwireError
from engine.live.loop import LiveEngine
from engine.live.modulators import REFUSED, SCHEDULE_INTERVAL_S, check_lfo, modulatable
from engine.live.strength import strength_to_t_index_list, t_index_list_to_strength
from engine.pipeline.models import Models


def test_the_modulatable_set_is_every_live_number_of_the_registry_with_a_range_but_the_refused_ones():
    live_numbers = {
        path
        for path, spec in registry().items()
        if spec.live and spec.kind in ("int", "float") and spec.minimum is not None and spec.maximum is not None
    }
    found = set(modulatable()) - {"strength"}
    assert found == {path for path in live_numbers if registry()[path].apply not in REFUSED}
    assert {"controlnets.0.scale", "controlnets.3.scale", "controlnets.2.canny_high", "prompt.guidance"} <= found
    assert "strength" in modulatable() and modulatable()["strength"].maximum == 1.0


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("stream.width", "LFO on stream.width: it changes only with a rebuild"),
        ("stream.num_inference_steps", "LFO on stream.num_inference_steps: it moves the schedule"),
        ("tempo.bpm", "LFO on tempo.bpm: it is the beat clock that the LFOs follow"),
        ("prompt.text", r"LFO on prompt.text: not a live numeric parameter \(str\)"),
        ("stream.bogus", r"LFO on 'stream.bogus': not a live numeric parameter \(these can: .*controlnets.<i>.scale"),
    ],
)
def test_a_number_an_lfo_cannot_move_is_refused_in_one_line_naming_it(path, message):
    with pytest.raises(DreamwireError, match=message):
        check_lfo(path, "sine", 1.0, "beats", 0.1)


def test_an_lfo_on_a_controlnet_scale_and_on_strength_moves_the_value_in_effect_over_frames_without_a_rebuild(
    tiny_taesd_models: Models,
):
    engine = LiveEngine(with_controlnets(TINY_NET), models=Models(**{**tiny_taesd_models.__dict__, "loaded": {}}))
    try:
        now = FakeTime()
        clock = engine.tempo.clock
        clock.now = now
        clock.follow(bpm=120.0, beat=0.0)
        pipeline, unit = engine.pipeline, engine.pipeline.controlnets.units[0]
        tables = pipeline.tables.timesteps.data_ptr()
        events: list[object] = []
        engine.add_listener(events.append)
        steps, n = len(engine.preset.stream.t_index_list), engine.preset.stream.num_inference_steps
        base_strength = t_index_list_to_strength(engine.preset.stream.t_index_list, n)
        engine.tempo.modulators.set(check_lfo("controlnets.0.scale", "sine", 1.0, "beats", 1.5))  # 0.8 ± 1.5
        engine.tempo.modulators.set(check_lfo("strength", "triangle", 1.0, "bars", 0.5))
        scales, schedules, changes_at = [], [], []
        for frame in range(48):  # a bar at 120 bpm (2 s), 24 frames a second
            beat = frame / 12
            now.t = clock.time_of(beat)
            engine.apply_pending_controls()
            expected = min(max(0.8 + 1.5 * math.sin(2 * math.pi * (beat % 1.0)), 0.0), 2.0)
            assert unit.config.scale == pytest.approx(expected, abs=1e-9), beat
            assert float(unit.row_scale[0, 0]) == pytest.approx(expected, abs=1e-6)
            scales.append(unit.config.scale)
            schedule = list(pipeline.config.t_index_list)
            if schedules and schedule != schedules[-1]:  # a change: the triangle's strength at this beat
                strength = min(max(base_strength + 0.5 * (1 - 4 * abs((beat / 4) % 1.0 - 0.5)), 0.0), 1.0)
                assert schedule == strength_to_t_index_list(strength, steps, n), beat
                changes_at.append(now.t)
            schedules.append(schedule)
        assert min(scales) == 0.0 and max(scales) == 2.0  # clamped to its range [0, 2]
        assert len({round(s, 6) for s in scales}) >= 5  # it moved
        assert len({tuple(s) for s in schedules}) > 3  # strength moved the schedule ...
        for schedule in schedules:  # ... always a valid one of the same number of steps
            assert len(schedule) == steps and schedule == sorted(set(schedule)) and 0 <= schedule[0] < schedule[-1] < n
        gaps = [b - a for a, b in pairwise(changes_at)]
        assert min(gaps) >= SCHEDULE_INTERVAL_S - 1e-9  # rate-limited: at most one table rebuild per 50 ms
        assert engine.pipeline is pipeline and not engine.rebuilding  # no rebuild
        assert pipeline.tables.timesteps.data_ptr() == tables  # the tables were written in place
        assert engine.preset.controlnets[0].scale == 0.8  # the base stays in effect ...
        assert engine.preset.stream.t_index_list == [16, 32]
        assert events == [] and engine.controls.empty()  # ... and an LFO is neither a request nor an event
        assert engine.step() is not None  # and the pipeline renders with both
        engine.tempo.modulators.clear()
        engine.apply_pending_controls()
        assert unit.config.scale == 0.8 and pipeline.config.t_index_list == [16, 32]  # put back exactly
    finally:
        engine.close()


def test_an_lfo_on_the_seed_sets_whole_seeds_and_draws_the_noise_only_when_the_seed_changes(engine):
    live = engine()
    now = FakeTime()
    live.tempo.clock.now = now
    live.tempo.clock.follow(bpm=120.0, beat=0.0)
    live.tempo.modulators.set(check_lfo("prompt.seed", "square", 1.0, "beats", 4.0))  # 3 → 7, then 0 (clamped)
    noises = []
    for beat in (0.1, 0.2, 0.6, 0.7):
        now.t = live.tempo.clock.time_of(beat)
        live.apply_pending_controls()
        noises.append(live.pipeline.noise.clone())
    assert live.tempo.modulators.running  # not dropped: an int parameter gets an int
    assert noises[0].equal(noises[1]) and noises[2].equal(noises[3])  # the same seed: the same noise
    assert not noises[1].equal(noises[2])
    assert noises[0].equal(live.pipeline.noise_for_seed(7)) and noises[2].equal(live.pipeline.noise_for_seed(0))


def test_two_lfos_on_one_controlnet_both_land(tiny_taesd_models: Models):
    """start and end are set together on the running net: one must not put the other back to its base."""
    engine = LiveEngine(with_controlnets(TINY_NET), models=Models(**{**tiny_taesd_models.__dict__, "loaded": {}}))
    try:
        now = FakeTime()
        engine.tempo.clock.now = now
        engine.tempo.clock.follow(bpm=120.0, beat=0.0)
        engine.set("controlnets.0.end", 0.6)
        engine.apply_pending_controls()
        engine.tempo.modulators.set(check_lfo("controlnets.0.start", "square", 1.0, "beats", 0.2))  # 0 → 0.2
        engine.tempo.modulators.set(check_lfo("controlnets.0.end", "square", 1.0, "beats", 0.3))  # 0.6 → 0.9
        now.t += 0.1
        engine.apply_pending_controls()
        config = engine.pipeline.controlnets.units[0].config
        assert (config.start, config.end) == pytest.approx((0.2, 0.9))
        assert (engine.preset.controlnets[0].start, engine.preset.controlnets[0].end) == (0.0, 0.6)
    finally:
        engine.close()


def test_lfos_on_strength_and_a_controlnet_scale_over_osc_and_a_missing_entry_refused(rig):
    r = rig(with_controlnets(TINY_NET))
    r.controller.send(f"{NS}/lfo", "/strength", "sine", 2.0, "beats", 0.25)
    r.controller.send(f"{NS}/lfo", "/controlnets/0/scale", "saw", 1.0, "bars", 0.5)
    r.controller.send(f"{NS}/lfo", "/controlnets/1/scale", "saw", 1.0, "bars", 0.5)
    r.controller.send(f"{NS}/lfo", "/stream/width", "saw", 1.0, "bars", 8.0)
    errors = r.controller.sync(r.feedback)
    assert errors == [
        f"{NS}/lfo: controlnets.1: there is no such entry (the preset has 1; adding one sets the whole `controlnets` "
        "list, a rebuild)",
        f"{NS}/lfo: LFO on stream.width: it changes only with a rebuild (or at start), never per frame",
    ]
    assert set(r.engine.tempo.modulators.running) == {"strength", "controlnets.0.scale"}


def test_an_lfo_on_a_processor_strength_moves_its_device_scalar_within_range(tiny_taesd_models: Models):
    """Processor params are registry numbers too (processors.<stage>.<i>.<param>): an LFO reaches them unchanged."""
    from test_processors_live import with_processors

    engine = LiveEngine(with_processors(), models=tiny_taesd_models)
    try:
        now = FakeTime()
        engine.tempo.clock.now = now
        engine.tempo.clock.follow(bpm=120.0, beat=0.0)
        latent = engine.pipeline.stages.processors["latent_pre"][0]
        engine.tempo.modulators.set(check_lfo("processors.latent_pre.0.strength", "sine", 1.0, "beats", 0.5))
        seen = []
        for frame in range(12):
            beat = frame / 12
            now.t = engine.tempo.clock.time_of(beat)
            engine.apply_pending_controls()
            expected = min(max(0.3 + 0.5 * math.sin(2 * math.pi * beat), 0.0), 1.0)
            assert float(latent.strength) == pytest.approx(expected, abs=1e-6), beat
            seen.append(float(latent.strength))
        assert min(seen) == 0.0 and max(seen) == pytest.approx(0.8, abs=1e-6)
        assert engine.preset.processors.latent_pre[0].params["strength"] == 0.3  # the base stays in effect
    finally:
        engine.close()
