"""ControlNet in the stream (engine/pipeline/controlnet.py) against diffusers' own ControlNetModel and UNet, on the
tiny model (CPU, float32). The nets are built with ControlNetModel.from_unet and their zero-initialised output
convolutions randomised: otherwise every residual is zero and nothing here could fail."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import SIZE, clip, to_input

from engine.config.schema import ControlNetConfig, FilterConfig, PromptConfig, StreamConfig
from engine.core.errors import DreamwireError
from engine.pipeline.controlnet import ControlledUNet, build_random_controlnet, load_controlnet, randomize_zero_convs
from engine.pipeline.models import Models
from engine.pipeline.stream import StreamPipeline


class Recorder:
    """Wraps the UNet backend under the ControlNets: records each call's inputs, residuals and output."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[dict[str, Any]] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, embeddings: torch.Tensor, residuals: Any = None) -> Any:
        out = self.inner(x, t, embeddings, residuals)
        self.calls.append({"x": x.clone(), "t": t.clone(), "emb": embeddings.clone(), "res": residuals, "out": out})
        return out


def pipeline(
    models: Models, nets: list[dict[str, Any]] | None = None, guidance: float = 1.0, **stream: Any
) -> StreamPipeline:
    settings = {"width": SIZE, "height": SIZE, "t_index_list": [16, 32], "cfg_type": "self", **stream}
    configs = [ControlNetConfig(**{"model": "random", "preprocessor": "none", **net}) for net in nets or []]
    prompt = PromptConfig(text="a photo", guidance=guidance, seed=5)
    return StreamPipeline.prepared(models, StreamConfig(**settings), prompt, FilterConfig(), controlnets=configs)


def record(p: StreamPipeline) -> Recorder:
    assert isinstance(p.unet, ControlledUNet)
    recorder = Recorder(p.unet.inner)
    p.unet.inner = recorder
    return recorder


def run(p: StreamPipeline, frames: int = 2) -> list[torch.Tensor]:
    images = to_input(clip(frames))
    return [p.step(images[i : i + 1]).clone() for i in range(frames)]


@pytest.fixture(scope="module")
def models(tiny_taesd_models: Models) -> Models:
    """The tiny model with TAESD (deterministic encode), and its own cache of loaded ControlNets."""
    return Models(**{**tiny_taesd_models.__dict__, "loaded": {}})


def test_the_random_controlnet_has_random_output_convolutions(models):
    net = build_random_controlnet(models.unet)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    emb = torch.randn(2, 77, 32)
    down, mid = net(x, t, emb, controlnet_cond=torch.rand(2, 3, SIZE, SIZE), return_dict=False)
    assert all(block.abs().amax() > 1e-3 for block in down) and mid.abs().amax() > 1e-3


@pytest.mark.parametrize(("cfg_type", "guidance"), [("none", 1.0), ("full", 1.8), ("initialize", 1.8)])
def test_our_step_equals_diffusers_controlnet_then_unet_on_the_same_inputs(models, cfg_type, guidance):
    p = pipeline(models, [{"scale": 0.7}], guidance=guidance, cfg_type=cfg_type)
    recorder = record(p)
    frames = to_input(clip(2))
    net = models.loaded[("controlnet", "random")]
    for i in range(2):
        recorder.calls.clear()
        p.step(frames[i : i + 1])
        (call,) = recorder.calls  # Stream Batch: one UNet call for both slots (and the CFG rows)
        rows = call["x"].shape[0]
        assert rows == {"none": 2, "full": 4, "initialize": 3}[cfg_type]
        control = ((frames[i : i + 1] + 1) / 2).repeat(rows, 1, 1, 1)  # the same frame on every row
        down, mid = net(
            call["x"], call["t"], call["emb"], controlnet_cond=control, conditioning_scale=0.7, return_dict=False
        )
        expected = models.unet(
            call["x"],
            call["t"],
            encoder_hidden_states=call["emb"],
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            return_dict=False,
        )[0]
        plain = models.unet(call["x"], call["t"], encoder_hidden_states=call["emb"], return_dict=False)[0]
        assert (expected - plain).abs().amax() > 1e-3  # the ControlNet changes the prediction
        torch.testing.assert_close(call["out"], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("off", [{"scale": 0.0}, {"enabled": False}, {"start": 0.2, "end": 0.3}])
def test_scale_zero_disabled_or_no_slot_equal_no_controlnet_and_run_no_net(models, off):
    with_net = pipeline(models, [{"scale": 1.0, **off}])
    assert with_net.controlnets is not None and with_net.controlnets.active == []
    recorder = record(with_net)
    for ours, theirs in zip(run(with_net), run(pipeline(models)), strict=True):
        assert torch.equal(ours, theirs)
    assert all(call["res"] is None for call in recorder.calls)  # skipped: no residuals computed at all


def test_two_controlnets_with_scales_a_and_zero_equal_one_with_a(models):
    two = pipeline(models, [{"scale": 0.6}, {"scale": 0.0, "preprocessor": "canny"}])
    one = pipeline(models, [{"scale": 0.6}])
    for ours, theirs in zip(run(two), run(one), strict=True):
        torch.testing.assert_close(ours, theirs, atol=0, rtol=0)
    assert not torch.equal(run(pipeline(models, [{"scale": 0.6}]))[-1], run(pipeline(models))[-1])


def test_two_active_controlnets_sum_their_scaled_residuals(models):
    p = pipeline(models, [{"scale": 0.5}, {"scale": 1.5, "preprocessor": "soft_edge"}], cfg_type="none")
    recorder = record(p)
    run(p, 1)
    alone = [
        pipeline(models, [net], cfg_type="none")
        for net in ({"scale": 0.5}, {"scale": 1.5, "preprocessor": "soft_edge"})
    ]
    parts = []
    for single in alone:
        single_recorder = record(single)
        run(single, 1)
        parts.append(single_recorder.calls[0]["res"])
    (call,) = recorder.calls
    torch.testing.assert_close(call["res"][1], parts[0][1] + parts[1][1], atol=1e-5, rtol=1e-5)


def test_a_live_scale_change_moves_the_output_from_the_next_step_without_a_rebuild(models):
    changed, kept = pipeline(models, [{"scale": 0.5}]), pipeline(models, [{"scale": 0.5}])
    unit = changed.controlnets.units[0]
    addresses = (unit.row_scale.data_ptr(), unit.image.data_ptr(), id(changed.unet))
    frames = to_input(clip(4))
    for i in range(2):
        assert torch.equal(changed.step(frames[i : i + 1]), kept.step(frames[i : i + 1]))
    changed.set_controlnet(0, ControlNetConfig(model="random", preprocessor="none", scale=1.5))
    assert torch.equal(unit.row_scale[0, :2].flatten(), torch.tensor([1.5, 1.5]))
    assert (unit.row_scale.data_ptr(), unit.image.data_ptr(), id(changed.unet)) == addresses  # in place
    moved = [(changed.step(frames[i : i + 1]) - kept.step(frames[i : i + 1])).abs().amax() for i in (2, 3)]
    assert all(m > 1e-4 for m in moved)


def test_a_new_model_or_preprocessor_is_refused_as_a_live_change(models):
    p = pipeline(models, [{"scale": 0.5}])
    with pytest.raises(DreamwireError, match=r"controlnets\.0: a new model, preprocessor or input is a rebuild"):
        p.set_controlnet(0, ControlNetConfig(model="random", preprocessor="canny"))
    with pytest.raises(DreamwireError, match=r"controlnets\.1: this pipeline has no such ControlNet"):
        p.set_controlnet(1, ControlNetConfig(model="random", preprocessor="none"))


@pytest.mark.parametrize(
    ("start", "end", "acting"), [(0.0, 0.5, [0]), (0.5, 1.0, [1]), (0.0, 1.0, [0, 1]), (0.25, 0.75, [])]
)
def test_start_and_end_select_the_slots_they_name(models, start, end, acting, cfg_type="full"):
    p = pipeline(models, [{"scale": 0.8, "start": start, "end": end}], guidance=1.8, cfg_type=cfg_type)
    unit = p.controlnets.units[0]
    per_latent_row = [0.8 if slot in acting else 0.0 for slot in (0, 1)]  # f = 1: one row per slot
    expected = per_latent_row * (2 if cfg_type == "full" else 1)  # full CFG: [X ; X]
    assert unit.row_scale[0, : len(expected)].flatten().tolist() == pytest.approx(expected)
    if not acting:
        assert p.controlnets.active == []
        return
    recorder = record(p)
    p.step(to_input(clip(1)))
    (call,) = recorder.calls
    _, mid = call["res"]
    plain = models.unet(call["x"], call["t"], encoder_hidden_states=call["emb"], return_dict=False)[0]
    for row, scale in enumerate(expected):
        assert (mid[row].abs().amax() > 0) == (scale > 0)  # rows of the other slots get no residual
        # ... so their prediction is the UNet's alone, and the named slots' is not
        assert torch.allclose(call["out"][row], plain[row], atol=1e-6) == (scale == 0)


def test_sequential_mode_gives_each_slot_its_own_scale(models):
    p = pipeline(models, [{"scale": 0.8, "start": 0.5}], use_denoising_batch=False, cfg_type="none")
    recorder = record(p)
    run(p, 2)
    residuals = [call["res"] for call in recorder.calls]
    assert len(residuals) == 4  # two slots, one call each, two frames
    for index, res in enumerate(residuals):
        acts = index % 2 == 1  # slot 1 only
        assert (res[1].abs().amax() > 0) == acts


def test_a_controlnet_for_another_base_is_refused_at_load_naming_both(models, tmp_path: Path):
    from diffusers import ControlNetModel

    other = ControlNetModel.from_config({**ControlNetModel.from_unet(models.unet).config, "cross_attention_dim": 48})
    folder = tmp_path / "sd15-canny"
    other.save_pretrained(folder)
    with pytest.raises(DreamwireError) as caught:
        load_controlnet(str(folder), models.unet, "tiny", torch.device("cpu"), torch.float32)
    line = str(caught.value)
    assert "\n" not in line and str(folder) in line and "'tiny'" in line
    assert "cross_attention_dim is 48, the UNet's is 32" in line


def test_a_controlnet_loads_from_a_local_diffusers_folder(models, tmp_path: Path):
    from diffusers import ControlNetModel

    torch.manual_seed(3)
    net = randomize_zero_convs(ControlNetModel.from_unet(models.unet), seed=4)
    net.save_pretrained(tmp_path / "cn")
    loaded = load_controlnet(str(tmp_path / "cn"), models.unet, "tiny", torch.device("cpu"), torch.float32)
    x, t, emb, cond = torch.randn(1, 4, 8, 8), torch.tensor([400]), torch.randn(1, 77, 32), torch.rand(1, 3, 64, 64)
    ours = loaded(x, t, emb, controlnet_cond=cond, return_dict=False)[1]
    torch.testing.assert_close(ours, net(x, t, emb, controlnet_cond=cond, return_dict=False)[1], atol=1e-6, rtol=0)
    with pytest.raises(DreamwireError, match="ControlNet folder not found"):
        load_controlnet(str(tmp_path / "missing"), models.unet, "tiny", torch.device("cpu"), torch.float32)


def test_txt2img_needs_an_external_control_image(models):
    with pytest.raises(DreamwireError, match="has no input frame to make a control image"):
        pipeline(models, [{"scale": 1.0}], mode="txt2img")


def test_reuse_frames_computes_the_residuals_once_every_n_frames_and_keeps_them_between(models):
    reused, every = pipeline(models, [{"scale": 0.9, "reuse_frames": 3}]), pipeline(models, [{"scale": 0.9}])
    unit = reused.controlnets.units[0]
    runs: list[int] = []
    inner = unit.run
    unit.run = lambda *args: runs.append(1) or inner(*args)  # type: ignore[method-assign]
    recorder = record(reused)
    frames = to_input(clip(5))
    outputs = []
    for i in range(5):
        outputs.append((reused.step(frames[i : i + 1]).clone(), every.step(frames[i : i + 1]).clone()))
    assert len(runs) == 2  # frames 0 and 3
    mids = [call["res"][1] for call in recorder.calls]  # the mid residual per frame: kept, or new
    assert mids[1] is mids[0] and mids[2] is mids[0] and mids[3] is not mids[0] and mids[4] is mids[3]
    assert torch.equal(outputs[0][0], outputs[0][1])  # the first frame computes, as without reuse
    assert (outputs[2][0] - outputs[2][1]).abs().amax() > 1e-5  # then the kept residuals lag
    reused.set_controlnet_scale(0, 1.2)  # a new scale is computed at once, not after the kept ones run out
    reused.step(frames[:1])
    assert len(runs) == 3
    with pytest.raises(DreamwireError, match=r"reuse_frames above 1 cannot run under stream\.cuda_graph"):
        pipeline(models, [{"scale": 0.9, "reuse_frames": 2}], cuda_graph=True)
