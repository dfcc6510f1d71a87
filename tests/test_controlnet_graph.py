"""ControlNets under stream.cuda_graph's logic on a CPU (the FxGraph stand-in of tests/test_cuda_graph.py): the
replay equals eager through live scale, range and threshold changes with every buffer where it was captured; only
a change of which nets run captures again."""

from __future__ import annotations

import torch
from conftest import clip, to_input
from test_controlnet import pipeline
from test_cuda_graph import graphed

from engine.config.schema import ControlNetConfig
from engine.pipeline.models import Models


def buffers(p) -> dict[str, int]:
    unit = p.controlnets.units[0]
    return {
        "row_scale": unit.row_scale.data_ptr(),
        "image": unit.image.data_ptr(),
        "canny.low": unit.preprocess.low.data_ptr(),
        "canny.high": unit.preprocess.high.data_ptr(),
    }


def test_replay_equals_eager_through_controlnet_changes_without_a_re_capture(tiny_taesd_models: Models):
    models = Models(**{**tiny_taesd_models.__dict__, "loaded": {}})
    net = {"scale": 0.6, "preprocessor": "canny", "canny_low": 20.0, "canny_high": 60.0}
    eager, replayed = pipeline(models, [net], cfg_type="none"), pipeline(models, [net], cfg_type="none")
    runner = graphed(replayed)
    addresses = buffers(replayed)
    frames = [to_input(clip(3)[i : i + 1]) for i in range(3)]
    entry = ControlNetConfig(model="random", **net)
    changes = [
        entry,
        # written in place: the per-row scales (slot 0 off, slot 1 at 1.7) and the thresholds; the same nets run
        entry.model_copy(update={"scale": 1.7, "start": 0.5, "canny_low": 5.0, "canny_high": 30.0}),
    ]
    for frame, change in zip(frames, changes, strict=False):
        for p in (eager, replayed):
            p.set_controlnet(0, change)
        torch.testing.assert_close(replayed.step(frame), eager.step(frame), atol=1e-6, rtol=0)
    assert runner.captures == 1, "a scale, range or threshold change must not need a re-capture"
    assert buffers(replayed) == addresses
    # scale 0 skips the net: another step, captured again
    for p in (eager, replayed):
        p.set_controlnet(0, entry.model_copy(update={"scale": 0.0}))
    torch.testing.assert_close(replayed.step(frames[2]), eager.step(frames[2]), atol=1e-6, rtol=0)
    assert runner.captures == 2 and buffers(replayed) == addresses
