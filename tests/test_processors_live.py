"""Processor params live: through the engine (applied between frames, no rebuild; a list change rebuilds), over
OSC on a real UDP socket (with StreamDiffusionTD's FX names), and under stream.cuda_graph's logic (the FxGraph
stand-in of tests/test_cuda_graph.py: the replay equals eager through param changes, buffers where they were)."""

from __future__ import annotations

import json
import urllib.request

import pytest
import torch
from conftest import clip, preset, settle, to_input
from test_cuda_graph import graphed
from test_osc import NS, rig  # noqa: F401  (the fixture)
from test_processors import pipeline

from engine.config.processors import ProcessorsConfig
from engine.core.errors import DreamwireError
from engine.live.loop import LiveEngine

PROCESSORS = {
    "image_pre": [{"type": "feedback", "strength": 0.4, "zoom": 1.05}],
    "latent_pre": [{"type": "latent_feedback", "strength": 0.3}],
}


def with_processors(processors: dict = PROCESSORS):
    config = preset()
    config.processors = ProcessorsConfig.model_validate(processors)
    return config


def test_live_changes_apply_between_frames_without_a_rebuild_and_a_list_change_rebuilds(tiny_taesd_models):
    engine = LiveEngine(with_processors(), models=tiny_taesd_models)
    try:
        pipeline_before = engine.pipeline
        latent, image = (engine.pipeline.stages.processors[s][0] for s in ("latent_pre", "image_pre"))
        engine.set("processors.latent_pre.0.strength", 0.8)
        assert float(latent.strength) == pytest.approx(0.3), "nothing changes before the frame boundary"
        engine.apply_pending_controls()
        assert float(latent.strength) == pytest.approx(0.8)
        assert engine.preset.processors.latent_pre[0].params["strength"] == 0.8
        # a number over 4 output frames: halfway after 2
        grid = image.grid.clone()
        engine.set("processors.image_pre.0.zoom", 1.45, frames=4)
        engine.apply_pending_controls()
        engine.now.frame_number += 2
        engine.apply_pending_controls()
        assert engine.pipeline.stages.value("image_pre", 0, "zoom") == pytest.approx(1.25)
        assert not torch.equal(image.grid, grid)
        engine.now.frame_number += 2
        engine.apply_pending_controls()
        assert engine.pipeline.stages.value("image_pre", 0, "zoom") == pytest.approx(1.45)
        # enabled and the border mode: live too
        engine.set("processors.image_pre.0.enabled", False)
        engine.set("processors.image_pre.0.border", "reflection")
        engine.apply_pending_controls()
        assert engine.pipeline.stages.image_pre(None) is None, "a stage with nothing enabled is the identity"
        assert engine.pipeline is pipeline_before and not engine.rebuilding
        # bad values: one line naming them, nothing queued
        for path, value, message in [
            ("processors.image_pre.0.zoom", 9, "feedback param zoom 9 is not accepted"),
            ("processors.image_pre.1.zoom", 1.1, "processors.image_pre.1: there is no such entry"),
            ("processors.latent_pre.0.zoom", 1.1, "unknown parameter 'processors.latent_pre.0.zoom'"),
            ("processors.image_pre.0.border", "wrap", "feedback param border 'wrap' is not accepted"),
        ]:
            with pytest.raises(DreamwireError) as caught:
                engine.set(path, value)
            assert message in str(caught.value) and "\n" not in str(caught.value)
        # the list itself: a rebuild, with the values in effect
        engine.set("processors.latent_post", [{"type": "latent_feedback", "strength": 0.5}])
        settle(engine)
        assert engine.pipeline is not pipeline_before
        assert engine.pipeline.stages.value("latent_post", 0, "strength") == 0.5
        assert engine.pipeline.stages.value("latent_pre", 0, "strength") == pytest.approx(0.8)
        assert engine.pipeline.stages.value("image_pre", 0, "enabled") is False
    finally:
        engine.close()


def test_osc_sets_a_processor_param_by_our_address_and_streamdiffusiontds(rig):  # noqa: F811
    r = rig(with_processors())
    send = r.controller.send
    send(f"{NS}/processors/image_pre/0/zoom", 1.3)
    send("/fx/feedback_loop/rotation", 4.0)  # StreamDiffusionTD's FX name
    send("/fx/feedback_transform/border_mode", "border")
    send("/latent_feedback_strength", 0.65)
    assert r.controller.sync(r.feedback) == []
    r.apply()
    params = r.engine.preset.processors.image_pre[0].params
    assert params["border"] == "border"
    assert [params[name] for name in ("zoom", "rotation", "strength")] == pytest.approx([1.3, 4.0, 0.4])
    assert r.engine.pipeline.stages.value("latent_pre", 0, "strength") == pytest.approx(0.65)
    assert r.get(f"{NS}/processors/image_pre/0/zoom") == [pytest.approx(1.3)]
    send(f"{NS}/processors/image_pre/0/zoom", 9.0)
    send(f"{NS}/processors/image_pre", "[]")
    send("/fx/feedback_grade/saturation", 1.2)
    errors = r.controller.sync(r.feedback)
    assert len(errors) == 3, errors
    assert "feedback param zoom 9.0 is not accepted" in errors[0]
    assert "processors.image_pre is a rebuild key" in errors[1]
    assert "/processors/<stage>/<i>/<param>" in errors[2]
    with urllib.request.urlopen(r.http + f"{NS}/processors/image_pre/0/zoom") as answer:
        node = json.load(answer)
    assert node["RANGE"] == [{"MIN": 0.5, "MAX": 2}] and node["VALUE"] == [pytest.approx(1.3)]


def test_replay_equals_eager_through_processor_changes_without_a_re_capture(tiny_taesd_models):
    every_stage = {
        "image_pre": [{"type": "feedback", "strength": 0.5, "zoom": 1.1}],
        "latent_pre": [{"type": "latent_feedback", "strength": 0.3}],
        "latent_post": [{"type": "latent_feedback", "strength": 0.2}],
        "image_post": [{"type": "feedback", "strength": 0.3, "rotation": 5.0, "border": "reflection"}],
    }
    eager, replayed = (pipeline(tiny_taesd_models, every_stage, cfg_type="none") for _ in range(2))
    runner = graphed(replayed)

    def buffers() -> list[int]:
        return [tensor.data_ptr() for tensor in replayed.stages.state] + [
            t.data_ptr()
            for stage in replayed.stages.processors.values()
            for p in stage
            for t in (p.strength, getattr(p, "grid", p.strength))
        ]

    addresses = buffers()
    frames = [to_input(clip(6)[i : i + 1]) for i in range(6)]
    changes = [
        [],
        [("image_pre", 0, "zoom", 0.9), ("latent_pre", 0, "strength", 0.7)],
        [("image_post", 0, "border", "zeros"), ("image_post", 0, "pan_x", -0.1)],
        [("latent_post", 0, "strength", 0.0), ("image_pre", 0, "strength", 1.0)],
    ]
    for frame, change in zip(frames, changes, strict=False):
        for p in (eager, replayed):
            for stage, index, name, value in change:
                p.set_processor(stage, index, name, value)
        torch.testing.assert_close(replayed.step(frame), eager.step(frame), atol=1e-6, rtol=0)
    assert runner.captures == 1, "a param change must not need a re-capture"
    assert buffers() == addresses
    # switching a processor off changes the step: captured again, still equal
    for p in (eager, replayed):
        p.set_processor("latent_pre", 0, "enabled", False)
    for frame in frames[len(changes) :]:
        torch.testing.assert_close(replayed.step(frame), eager.step(frame), atol=1e-6, rtol=0)
    assert runner.captures == 2 and buffers() == addresses
