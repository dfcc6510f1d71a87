"""Processor stages on the tiny model (engine/pipeline/stages.py): a processor at strength 0 or disabled changes
nothing, a stage runs its list in order, the effects compute what their docstrings say, and bad entries are one
line naming them."""

from __future__ import annotations

import pytest
import torch
from conftest import SIZE, clip, to_input

from engine.config.presets import apply_override, describe_validation_error
from engine.config.processors import ProcessorsConfig, bench_settings
from engine.config.schema import FilterConfig, Preset, PromptConfig, StreamConfig
from engine.core.errors import DreamwireError
from engine.pipeline.models import Models
from engine.pipeline.processors.feedback import Feedback
from engine.pipeline.stages import Stages
from engine.pipeline.stream import StreamPipeline

FRAMES = 3  # two slots: the first output frame that went through both is the second


def pipeline(models: Models, processors: dict | None = None, **stream: object) -> StreamPipeline:
    settings = {"width": SIZE, "height": SIZE, "t_index_list": [16, 32], "cfg_type": "self", **stream}
    p = StreamPipeline(models, StreamConfig(**settings), processors=ProcessorsConfig.model_validate(processors or {}))
    p.prepare(PromptConfig(text="a photo", guidance=1.4), FilterConfig())
    return p


def run(p: StreamPipeline, frames: int = FRAMES) -> list[torch.Tensor]:
    images = [to_input(clip(frames)[i : i + 1]) for i in range(frames)]
    return [p.step(image if p.config.mode == "img2img" else None).clone() for image in images]


_PLAIN: dict[int, list[torch.Tensor]] = {}


def _plain(models: Models) -> list[torch.Tensor]:
    """The frames with no processor (once per session)."""
    if id(models) not in _PLAIN:
        _PLAIN[id(models)] = run(pipeline(models))
    return _PLAIN[id(models)]


CASES = [
    ("image_pre", "feedback", {"zoom": 1.2, "rotation": 9.0}),
    ("latent_pre", "latent_feedback", {}),
    ("latent_post", "latent_feedback", {}),
    ("image_post", "feedback", {"pan_x": 0.1, "border": "reflection"}),
]


@pytest.mark.parametrize(("stage", "kind", "params"), CASES)
def test_strength_zero_or_disabled_equals_no_processor_and_strength_changes_the_frames(
    tiny_taesd_models, stage, kind, params
):
    plain = _plain(tiny_taesd_models)

    def entry(**extra: object) -> dict:
        return {stage: [{"type": kind, "params": {**params, "strength": 0.0}, **extra}]}

    for processors in (entry(), entry(enabled=False)):
        for got, expected in zip(run(pipeline(tiny_taesd_models, processors)), plain, strict=True):
            assert torch.equal(got, expected), processors
    strong = entry()
    strong[stage][0]["params"]["strength"] = 0.6
    changed = run(pipeline(tiny_taesd_models, strong))
    assert not torch.equal(changed[-1], plain[-1]), "strength 0.6 must change the frames"


def stages_of(processors: dict, frames: int = 1) -> Stages:
    from engine.pipeline.processors.context import StageContext

    def noised(x0: torch.Tensor, out: torch.Tensor) -> None:
        out.copy_(x0 * 0.5)

    context = StageContext(frames, 16, 16, (4, 2, 2), torch.device("cpu"), torch.float32, noised)
    return Stages(ProcessorsConfig.model_validate(processors), context)


def test_a_stage_runs_its_list_in_order():
    zoom = {"type": "feedback", "params": {"zoom": 1.3, "strength": 0.5}}
    turn = {"type": "feedback", "params": {"rotation": 30.0, "pan_y": 0.1, "strength": 0.7, "border": "border"}}
    stages = stages_of({"image_pre": [zoom, turn]})
    last = torch.rand(1, 3, 16, 16) * 2 - 1
    stages.remember(torch.zeros(1, 4, 2, 2), last)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    first, second = stages.processors["image_pre"]
    in_order = second(first(x).clone()).clone()
    reversed_order = first(second(x).clone()).clone()
    assert not torch.allclose(in_order, reversed_order, atol=1e-3), "the two must not commute for this test"
    torch.testing.assert_close(stages.image_pre(x), in_order, atol=0, rtol=0)
    # switching the first off leaves the second alone
    stages.set("image_pre", 0, "enabled", False)
    torch.testing.assert_close(stages.image_pre(x), second(x), atol=0, rtol=0)


def test_feedback_pans_by_whole_pixels_and_fills_each_border_mode():
    previous = torch.arange(16.0).view(1, 1, 1, 16).expand(1, 3, 16, 16) / 16 - 0.5
    shifted = {}
    for border in ("zeros", "border", "reflection"):
        stages = stages_of({"image_pre": [{"type": "feedback", "strength": 1.0, "pan_x": 2 / 16, "border": border}]})
        stages.remember(torch.zeros(1, 4, 2, 2), previous)
        shifted[border] = stages.image_pre(torch.zeros(1, 3, 16, 16))[0, 0, 0]
    row = previous[0, 0, 0]
    for mode, out in shifted.items():
        torch.testing.assert_close(out[2:], row[:-2], atol=1e-5, rtol=0, msg=mode)  # moved right by 2 pixels
    torch.testing.assert_close(shifted["zeros"][:2], torch.full((2,), -1.0))  # black
    torch.testing.assert_close(shifted["border"][:2], row[[0, 0]])  # the edge pixel repeated
    torch.testing.assert_close(shifted["reflection"][:2], row[[2, 1]], atol=1e-5, rtol=0)  # mirrored at the edge


def test_feedback_zoom_and_rotation_are_about_the_centre():
    stages = stages_of({"image_post": [{"type": "feedback", "strength": 1.0, "rotation": 90.0, "zoom": 1.0}]})
    previous = torch.zeros(1, 3, 16, 16)
    previous[..., 7:9, 12:15] = 1.0  # a bar right of the centre
    stages.remember(torch.zeros(1, 4, 2, 2), previous)
    out = stages.image_post(torch.zeros(1, 3, 16, 16))
    # counter-clockwise on screen: right of the centre goes above it (y points down)
    torch.testing.assert_close(out[..., 1:4, 7:9], torch.ones(1, 3, 3, 2), atol=1e-5, rtol=0)
    assert isinstance(stages.processors["image_post"][0], Feedback)


def test_latent_feedback_blends_with_the_previous_output_noised_in_latent_pre_and_clean_in_latent_post():
    entry = {"type": "latent_feedback", "strength": 0.25}
    stages = stages_of({"latent_pre": [entry], "latent_post": [entry]})
    x0 = torch.randn(1, 4, 2, 2)
    stages.remember(x0, torch.zeros(1, 3, 16, 16))
    x = torch.randn(1, 4, 2, 2)
    torch.testing.assert_close(stages.latent_pre(x.clone()), x + 0.25 * (0.5 * x0 - x))  # noised: 0.5·x0 here
    torch.testing.assert_close(stages.latent_post(x.clone()), x + 0.25 * (x0 - x))


def test_txt2img_feeds_back_through_the_encoder_from_a_black_frame(tiny_taesd_models):
    """With image_pre processors, txt2img encodes a black frame mixed with the previous output (the tunnel):
    at strength 1 the new frames are the previous output, noised; at 0 a black frame (not the fresh noise)."""
    tunnel = {"image_pre": [{"type": "feedback", "strength": 1.0, "zoom": 1.05}]}
    frames = run(pipeline(tiny_taesd_models, tunnel, mode="txt2img"), 4)
    assert not torch.equal(frames[-1], frames[-2]), "the tunnel moves"
    unfed = run(pipeline(tiny_taesd_models, {"image_pre": [{"type": "feedback", "strength": 0.0}]}, mode="txt2img"), 3)
    img2img, black = pipeline(tiny_taesd_models), torch.full((1, 3, SIZE, SIZE), -1.0)
    for got in unfed:  # txt2img with image_pre = img2img on a black input
        assert torch.equal(got, img2img.step(black))


def test_a_reset_clears_the_memory(tiny_taesd_models):
    processors = {"latent_pre": [{"type": "latent_feedback", "strength": 0.5}]}
    p = pipeline(tiny_taesd_models, processors)
    first = run(p, 3)
    p.prepare(PromptConfig(text="a photo", guidance=1.4), FilterConfig())
    assert all(torch.equal(a, b) for a, b in zip(run(p, 3), first, strict=True))


@pytest.mark.parametrize(
    ("processors", "message"),
    [
        (
            {"image_pre": [{"type": "blur"}]},
            "processors.image_pre.0.type: unknown processor type 'blur' in image stages",
        ),
        ({"latent_pre": [{"type": "feedback"}]}, "unknown processor type 'feedback' in latent stages"),
        ({"image_pre": [{"type": "feedback", "zooom": 1.1}]}, "feedback has no param 'zooom' (its params: strength"),
        ({"image_post": [{"type": "feedback", "params": {"zoom": 9}}]}, "feedback param zoom 9 is not accepted"),
        ({"image_post": [{"type": "feedback", "border": "wrap"}]}, "feedback param border 'wrap' is not accepted"),
        ({"latent_post": [{"type": "latent_feedback"}] * 5}, "processors.latent_post"),
        ({"image_preee": []}, "unknown key 'processors.image_preee' (allowed: image_post, image_pre, latent_post"),
    ],
)
def test_bad_entries_are_one_line_naming_them(processors, message):
    with pytest.raises(Exception) as caught:
        Preset.model_validate({"processors": processors})
    line = describe_validation_error(caught.value)
    assert message in line and "\n" not in line, line


def test_set_overrides_reach_params_by_their_registry_path():
    raw: dict = {"processors": {"image_pre": [{"type": "feedback"}]}}
    apply_override(raw, "processors.image_pre.0.zoom=1.04")
    preset = Preset.model_validate(raw)
    assert preset.processors.image_pre[0].params["zoom"] == 1.04


def test_a_live_change_for_a_missing_entry_is_one_line(tiny_taesd_models):
    p = pipeline(tiny_taesd_models)
    with pytest.raises(DreamwireError, match=r"processors\.image_pre\.0: this pipeline has no such processor"):
        p.set_processor("image_pre", 0, "strength", 0.5)


def test_the_bench_settings_build_and_latent_feedback_steadies_the_moving_clip(tiny_taesd_models):
    """The settings the flicker bench compares are valid, and latent_feedback lowers the mean difference between
    consecutive output frames on the moving pattern (the direction only: random weights)."""
    settings = bench_settings()
    assert list(settings) == ["none", "latent_feedback 0.3", "latent_feedback 0.6", "feedback 0.3"]

    def flicker(label: str) -> float:
        p = StreamPipeline(
            tiny_taesd_models, StreamConfig(width=SIZE, height=SIZE, t_index_list=[16, 32]), (), settings[label]
        )
        p.prepare(PromptConfig(text="a photo"), FilterConfig())
        out = run(p, 14)[6:]  # past the warm-up: the memory starts from the zero buffer's outputs
        return float(torch.stack([(a - b).abs().mean() for a, b in zip(out[1:], out[:-1], strict=False)]).mean())

    assert flicker("latent_feedback 0.6") < flicker("none")
