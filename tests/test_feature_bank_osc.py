"""StreamDiffusionTD's `/cached_attention` over a real UDP socket: its JSON keys land on feature_bank.*, bad ones
are answered on /dreamwire/error and change nothing."""

from __future__ import annotations

from test_osc import rig  # noqa: F401  (rig: the fixture, a real UDP socket on loopback)


def test_cached_attention_maps_onto_the_feature_bank(rig):  # noqa: F811
    r = rig()
    r.controller.send("/cached_attention", '{"use_cached_attn": true, "cache_maxframes": 3, "cache_interval": 2}')
    r.controller.send("/cached_attention", '{"fi_strength": 0.5, "fi_threshold": 0.9}')
    assert r.controller.sync(r.feedback) == []
    r.apply()
    bank = r.engine.preset.feature_bank
    assert (bank.enabled, bank.max_frames, bank.interval, bank.fusion_strength, bank.fusion_threshold) == (
        True,
        3,
        2,
        0.5,
        0.9,
    )
    assert r.engine.pipeline.feature_bank.frames == 3  # in the running pipeline, without a rebuild
    assert r.get("/feature_bank/max_frames") == [3]


def test_bad_cached_attention_messages_are_refused_whole(rig):  # noqa: F811
    r = rig()
    before = r.engine.preset.feature_bank.model_dump()
    r.controller.send("/cached_attention", '{"cache_interval": 2, "cache_maxframes": 9}')  # one bad value: none set
    r.controller.send("/cached_attention", '{"cache_frames": 2}')
    r.controller.send("/cached_attention", "not json")
    r.controller.send("/cached_attention", "[2, 4]")
    errors = r.controller.sync(r.feedback)
    r.apply()
    assert len(errors) == 4
    assert errors[0].startswith("/cached_attention: cache_maxframes: 9 is not accepted")
    assert "unknown key 'cache_frames'" in errors[1]
    assert "expects a JSON object" in errors[2] and "expects a JSON object" in errors[3]
    assert r.engine.preset.feature_bank.model_dump() == before
