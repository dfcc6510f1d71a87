"""The SDXL family on the tiny SDXL (two text encoders, text_time added conditioning): the prompt encoded as
diffusers' StableDiffusionXLPipeline encodes it, our step against a hand-written one from diffusers' UNet call with
added_cond_kwargs, the pooled embedding through blends and transitions, the backends and the preset."""

from __future__ import annotations

import pytest
import torch
from conftest import SIZE, clip, make_pipeline, to_input

from engine.config.presets import load_preset
from engine.config.schema import ControlNetConfig, FilterConfig, PromptConfig, StreamConfig
from engine.core.errors import DreamwireError
from engine.live.blending import blend_embeddings
from engine.live.controls import BlendPrompts
from engine.live.targets import MORPHS, combine_prompt
from engine.pipeline import sdxl
from engine.pipeline.controlnet import RANDOM_CONTROLNET_ID, check_base, load_controlnet
from engine.pipeline.schedule import SIGMA_DATA, alphas_cumprod, lcm_timesteps
from engine.pipeline.stream import StreamPipeline

POOLED = 32  # the tiny second encoder's projection_dim


@pytest.fixture(scope="module")
def diffusers_pipeline(tiny_sdxl_models):
    """diffusers' own SDXL pipeline over the same tiny parts: the reference for the text conditioning."""
    from diffusers import LCMScheduler, StableDiffusionXLPipeline

    m = tiny_sdxl_models
    return StableDiffusionXLPipeline(
        vae=m.vae,
        text_encoder=m.text_encoder,
        text_encoder_2=m.text_encoder_2,
        tokenizer=m.tokenizer,
        tokenizer_2=m.tokenizer_2,
        unet=m.unet,
        scheduler=LCMScheduler.from_config(m.scheduler_config),
        add_watermarker=False,
    )


def reference_text(pipe, text: str, negative: str) -> tuple[torch.Tensor, ...]:
    """(cond [1, 77, D], uncond, pooled cond [1, P], pooled uncond) as diffusers encodes them."""
    return pipe.encode_prompt(text, device="cpu", do_classifier_free_guidance=True, negative_prompt=negative)


def test_the_tiny_sdxl_is_detected_and_encodes_as_diffusers_does(tiny_sdxl_models, tiny_models, diffusers_pipeline):
    assert tiny_sdxl_models.sdxl and not tiny_models.sdxl
    assert sdxl.is_sdxl(tiny_sdxl_models.unet) and not sdxl.is_sdxl(tiny_models.unet)
    assert sdxl.pooled_dim(tiny_sdxl_models.unet) == POOLED
    packed = tiny_sdxl_models.encode_prompt("a red fox")
    assert packed.shape == (1, 77 + 1, 64)  # 77 tokens of 32 + 32, then the pooled row
    hidden, pooled = sdxl.split(packed, POOLED)
    cond, _, pooled_cond, _ = reference_text(diffusers_pipeline, "a red fox", "blurry")
    torch.testing.assert_close(hidden, cond, atol=0, rtol=0)
    torch.testing.assert_close(pooled, pooled_cond, atol=0, rtol=0)
    assert torch.count_nonzero(packed[0, -1, POOLED:]) == 0  # the padding
    time_ids = diffusers_pipeline._get_add_time_ids(
        (48, SIZE), (0, 0), (48, SIZE), dtype=torch.float32, text_encoder_projection_dim=POOLED
    )
    assert sdxl.time_ids(48, SIZE) == time_ids[0].tolist()


def _tables(models, t_index_list: list[int]) -> dict[str, torch.Tensor]:
    """a_i, b_i, c_skip, c_out for the slots, from the LCM schedule, written out."""
    tau = lcm_timesteps(models.scheduler_config, 50)[t_index_list]
    abar = alphas_cumprod(models.scheduler_config)[tau]
    scaled = tau * 10.0
    view = lambda v: v.view(-1, 1, 1, 1)  # noqa: E731
    return {
        "tau": tau,
        "a": view(abar.sqrt()),
        "b": view((1 - abar).sqrt()),
        "c_skip": view(SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)),
        "c_out": view(scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5),
    }


def _hand_written_stream(models, pipe, cfg_type: str, frames: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    """Two slots, one frame per step, guidance 1.5, δ 0.8, written out from DESIGN.md "The method" with
    diffusers' text conditioning and UNet call (added_cond_kwargs)."""
    g, delta = 1.5, 0.8
    tab = _tables(models, [16, 32])
    a, b, c_skip, c_out = tab["a"], tab["b"], tab["c_skip"], tab["c_out"]
    z = torch.randn((2, 4, SIZE // 8, SIZE // 8), generator=torch.Generator().manual_seed(seed))
    cond, uncond, pooled_cond, pooled_uncond = reference_text(pipe, "a red fox", "blurry")
    time_ids = pipe._get_add_time_ids((SIZE, SIZE), (0, 0), (SIZE, SIZE), torch.float32, POOLED)  # [1, 6]

    def unet(x: torch.Tensor, text: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """diffusers' call: k prompts (text [k, 77, D], pooled [k, P]) over the 2 slots' rows each, one call: under
        full guidance [x ; x] with [uncond ; cond], as its SDXL pipeline does."""
        k = len(pooled)
        added = {"text_embeds": pooled.repeat_interleave(2, 0), "time_ids": time_ids.repeat(2 * k, 1)}
        text = text.repeat_interleave(2, 0)
        return models.unet(x, tab["tau"].repeat(k), encoder_hidden_states=text, added_cond_kwargs=added)[0]

    def lcm(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return c_out * ((x - b * eps) / a) + c_skip * x

    buffer, stock, outputs = torch.zeros_like(z[:1]), torch.zeros_like(z), []
    a_next, b_next = torch.cat([a[1:], torch.ones_like(a[:1])]), torch.cat([b[1:], torch.ones_like(b[:1])])
    for image in frames:
        x = torch.cat([a[:1] * models.vae.encode(image).latents + b[:1] * z[:1], buffer])
        stock = torch.cat([z[:1], stock[:1]])  # the residual moves down one slot
        if cfg_type == "full":
            both = torch.cat([uncond, cond]), torch.cat([pooled_uncond, pooled_cond])
            eps_uncond, eps_cond = unet(torch.cat([x, x]), *both).chunk(2)
        else:
            eps_cond, eps_uncond = unet(x, cond, pooled_cond), delta * stock
        eps = eps_uncond + g * (eps_cond - eps_uncond)
        x0 = lcm(x, eps)
        if cfg_type == "self":
            stock = torch.cat([z[1:], z[:1]]) + a_next * lcm(b * stock, eps) / b_next
        buffer = a[1:] * x0[:1] + b[1:] * z[1:]
        outputs.append(models.vae.decode(x0[1:], return_dict=False)[0])
    return outputs


@pytest.mark.parametrize("cfg_type", ["self", "full"])
def test_step_equals_the_hand_written_one(tiny_sdxl_models, diffusers_pipeline, cfg_type):
    frames = [to_input(clip(3)[i : i + 1]) for i in range(3)]
    prompt = {"text": "a red fox", "negative": "blurry", "guidance": 1.5, "delta": 0.8, "seed": 5}
    pipeline = make_pipeline(tiny_sdxl_models, prompt, cfg_type=cfg_type)
    ours = [pipeline.step(frame).clone() for frame in frames]
    expected = _hand_written_stream(tiny_sdxl_models, diffusers_pipeline, cfg_type, frames, seed=5)
    for k, (mine, theirs) in enumerate(zip(ours, expected, strict=True)):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0, msg=lambda m, k=k: f"frame {k}: {m}")
    assert (ours[1] - ours[2]).abs().max() > 1e-3  # frames differ: the comparison is not vacuous


@pytest.mark.parametrize(("cfg_type", "rows"), [("none", 2), ("self", 2), ("initialize", 3), ("full", 4)])
def test_the_added_conditioning_follows_the_rows_of_every_cfg_type(tiny_sdxl_models, cfg_type, rows):
    prompt = {"text": "a red fox", "negative": "blurry", "guidance": 1.5}
    pipeline = make_pipeline(tiny_sdxl_models, prompt, cfg_type=cfg_type)
    added = pipeline.added.kwargs
    assert added["text_embeds"].shape == (rows, POOLED) and pipeline.embeddings.shape == (rows, 77, 64)
    assert added["time_ids"].tolist() == [[SIZE, SIZE, 0, 0, SIZE, SIZE]] * rows
    pooled_cond = sdxl.split(tiny_sdxl_models.encode_prompt("a red fox"), POOLED)[1][0]
    pooled_uncond = sdxl.split(tiny_sdxl_models.encode_prompt("blurry"), POOLED)[1][0]
    for row in range(rows):  # each row's pooled embedding belongs to the same prompt as its token embeddings
        is_uncond = torch.equal(pipeline.embeddings[row], pipeline.uncond[0, :-1])
        assert torch.equal(added["text_embeds"][row], pooled_uncond if is_uncond else pooled_cond)
    assert sum(torch.equal(e, pipeline.uncond[0, :-1]) for e in pipeline.embeddings) == rows - 2  # the uncond rows


def test_a_prompt_change_writes_in_place_and_crossing_guidance_one_relays(tiny_sdxl_models):
    pipeline = make_pipeline(tiny_sdxl_models, {"guidance": 1.5, "negative": "blurry"}, cfg_type="full")
    added = pipeline.added.kwargs
    addresses = {name: tensor.data_ptr() for name, tensor in added.items()}
    cond = tiny_sdxl_models.encode_prompt("a blue whale")
    pipeline.set_embeddings(cond, pipeline.uncond)
    assert {name: tensor.data_ptr() for name, tensor in added.items()} == addresses  # in place: no allocation
    assert torch.equal(added["text_embeds"][-1], cond[0, -1, :POOLED])
    pipeline.set_guidance(1.0, 1.0)  # full → plain: the uncond rows go
    assert added["text_embeds"].shape == (2, POOLED) and added["time_ids"].shape == (2, 6)
    assert pipeline.added.kwargs is added  # the same dict the UNet call holds


def test_the_pooled_embedding_follows_prompt_blends_and_transitions(tiny_sdxl_models):
    texts = ("a red fox", "a blue whale", "a green forest")
    encoded = tuple(tiny_sdxl_models.encode_prompt(t) for t in texts)
    pooled = [sdxl.split(e, POOLED)[1] for e in encoded]
    weights = [0.5, 0.3, 0.2]
    blend = BlendPrompts(items=tuple(zip(texts, weights, strict=True)), method="linear")
    blended = combine_prompt(blend, encoded)
    expected = sum(w * p for w, p in zip(weights, pooled, strict=True))
    torch.testing.assert_close(sdxl.split(blended, POOLED)[1], expected, atol=1e-6, rtol=0)
    slerped = blend_embeddings(encoded[:2], [1.0, 1.0], "slerp")  # per row: the pooled vector slerped by itself
    a, b = pooled[0][0], pooled[1][0]
    theta = torch.acos(torch.dot(a / a.norm(), b / b.norm()))
    direction = (torch.sin(theta / 2) * (a / a.norm() + b / b.norm())) / torch.sin(theta)
    torch.testing.assert_close(
        sdxl.split(slerped, POOLED)[1][0], direction * (a.norm() + b.norm()) / 2, atol=1e-5, rtol=0
    )
    assert torch.count_nonzero(slerped[0, -1, POOLED:]) == 0
    # in the pipeline: a transition's step (MORPHS "cond") moves the pooled rows with the tokens
    pipeline = make_pipeline(tiny_sdxl_models, {"text": texts[0]}, cfg_type="none")
    morph = MORPHS["cond"]
    halfway = morph.interp(morph.get(pipeline), encoded[1], 0.5)
    morph.set(pipeline, halfway)
    for row in pipeline.added.kwargs["text_embeds"]:
        torch.testing.assert_close(row, halfway[0, -1, :POOLED], atol=0, rtol=0)
    assert not torch.allclose(halfway[0, -1, :POOLED], pooled[0][0])


def test_a_live_blend_reaches_the_added_conditioning(tiny_sdxl_models):
    """Through the live engine: the encoder worker, the blend and the pipeline's added conditioning."""
    from conftest import preset as live_preset
    from test_live_requests import drive_until

    from engine.live.loop import LiveEngine

    settings = live_preset(cfg_type="none")
    settings = settings.model_copy(update={"model": settings.model.model_copy(update={"id": "tiny-sdxl"})})
    live = LiveEngine(settings, models=tiny_sdxl_models)
    try:
        live.blend_prompts([("a red fox", 1.0), ("a blue whale", 3.0)], method="linear")
        encode = tiny_sdxl_models.encode_prompt
        pooled = 0.25 * encode("a red fox")[0, -1, :POOLED] + 0.75 * encode("a blue whale")[0, -1, :POOLED]
        added = live.pipeline.added.kwargs
        drive_until(live, lambda: torch.allclose(added["text_embeds"], pooled.expand(2, -1), atol=1e-6, rtol=0))
    finally:
        live.close()


def test_a_controlnet_for_another_base_names_both(tiny_sdxl_models, tiny_models):
    sd_net = load_controlnet(RANDOM_CONTROLNET_ID, tiny_models.unet, "tiny", torch.device("cpu"), torch.float32)
    with pytest.raises(DreamwireError) as caught:
        check_base(sd_net, tiny_sdxl_models.unet, "some/sd-controlnet", "tiny-sdxl")
    line = str(caught.value)
    assert "\n" not in line
    assert "'some/sd-controlnet' (cross-attention 32)" in line and "'tiny-sdxl' (SDXL)" in line
    assert sdxl.base_name(type("C", (), {"cross_attention_dim": 768})()) == "SD 1.x"


def test_an_sdxl_controlnet_runs_with_the_added_conditioning(tiny_sdxl_models):
    stream = StreamConfig(width=SIZE, height=SIZE, t_index_list=[16, 32], cfg_type="self")
    net = ControlNetConfig(model=RANDOM_CONTROLNET_ID, preprocessor="canny", scale=1.0)
    pipeline = StreamPipeline(tiny_sdxl_models, stream, [net])
    pipeline.prepare(PromptConfig(text="a red fox", guidance=1.2), FilterConfig())
    frame = to_input(clip(1))
    with_net = pipeline.step(frame).clone()
    pipeline.set_controlnet_scale(0, 0.0)
    pipeline.prepare(PromptConfig(text="a red fox", guidance=1.2), FilterConfig())
    assert (pipeline.step(frame) - with_net).abs().max() > 1e-4  # the net's residuals reached the UNet


def test_the_sdxl_turbo_preset_validates():
    preset = load_preset("sdxl-turbo")
    assert (preset.model.id, preset.model.vae) == ("stabilityai/sdxl-turbo", "madebyollin/taesdxl")
    stream = preset.stream
    assert (stream.width, stream.height, len(stream.t_index_list), stream.cfg_type) == (512, 512, 1, "none")


def test_onnx_export_with_the_added_inputs_matches_torch(tiny_sdxl_models, tmp_path):
    import onnxruntime

    from engine.backends.onnx_export import export_unet

    unet = tiny_sdxl_models.unet
    path = export_unet(unet, tmp_path / "unet.onnx", 4, (8, 8))  # cfg full's rows for 2 slots
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = ["sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"]
    assert [i.name for i in session.get_inputs()] == names
    generator = torch.Generator().manual_seed(0)
    for batch, (h, w) in ((4, (8, 8)), (1, (12, 16))):  # fewer rows (guidance off), another size
        x = torch.randn(batch, 4, h, w, generator=generator)
        t = torch.randint(0, 1000, (batch,), generator=generator)
        e = torch.randn(batch, 77, 64, generator=generator)
        pooled = torch.randn(batch, POOLED, generator=generator)
        time_ids = torch.tensor([sdxl.time_ids(8 * h, 8 * w)] * batch, dtype=torch.float32)
        added = {"text_embeds": pooled, "time_ids": time_ids}
        reference = unet(x, t, encoder_hidden_states=e, added_cond_kwargs=added, return_dict=False)[0]
        (ours,) = session.run(None, dict(zip(names, (v.numpy() for v in (x, t, e, pooled, time_ids)), strict=True)))
        assert ours.shape == (batch, 4, h, w)
        assert float(abs(ours - reference.numpy()).max()) <= 1e-3
        # the added inputs are live in the graph (not folded into constants): another pooled embedding moves it
        (moved,) = session.run(
            None,
            {
                **dict(zip(names[:3], (x.numpy(), t.numpy(), e.numpy()), strict=True)),
                "text_embeds": (pooled + 1).numpy(),
                "time_ids": time_ids.numpy(),
            },
        )
        assert float(abs(moved - ours).max()) > 1e-4


def test_the_cuda_graph_stand_in_replays_the_added_conditioning(tiny_sdxl_models):
    """Through a prompt change and a blend under the CPU stand-in of a CUDA graph (tests/test_cuda_graph.py):
    replay equals eager, one capture, the added conditioning's buffers at their addresses."""
    from test_cuda_graph import graphed

    prompt = {"guidance": 1.6, "delta": 0.8, "negative": "grey"}
    eager = make_pipeline(tiny_sdxl_models, prompt, cfg_type="full")
    replayed = make_pipeline(tiny_sdxl_models, prompt, cfg_type="full")
    runner = graphed(replayed)
    addresses = {name: tensor.data_ptr() for name, tensor in replayed.added.kwargs.items()}
    cond = tiny_sdxl_models.encode_prompt("a red fox")
    blend = blend_embeddings([cond, tiny_sdxl_models.encode_prompt("a blue whale")], [0.5, 0.5], "slerp")
    changes = [lambda p: None, lambda p: p.set_embeddings(cond, p.uncond), lambda p: p.set_embeddings(blend, p.uncond)]
    for k, change in enumerate(changes):
        frame = to_input(clip(3)[k : k + 1])
        change(eager)
        change(replayed)
        torch.testing.assert_close(replayed.step(frame), eager.step(frame), atol=1e-6, rtol=0)
    assert runner.captures == 1
    assert {name: tensor.data_ptr() for name, tensor in replayed.added.kwargs.items()} == addresses


def test_compile_takes_the_added_conditioning_and_a_prompt_change_does_not_recompile(tiny_sdxl_models, monkeypatch):
    """torch.compile of the SDXL UNet: equal to eager, and a new prompt (the added conditioning written in place)
    runs the same compiled graph (dynamo's error_on_recompile). Dynamo's graph capture and guards are what the added
    inputs change; Inductor's code generation (2 minutes on 2 cores) is checked on the SD UNet in test_backends.py,
    so the graph here runs through dynamo's eager backend."""
    from engine.backends import compiled as compiled_module
    from engine.backends.compiled import CompiledUNet
    from engine.backends.fallback import Fallback

    monkeypatch.setattr(compiled_module, "compiled", lambda f: torch.compile(f, dynamic=False, backend="eager"))

    prompt = {"guidance": 1.5, "negative": "blurry"}
    eager = make_pipeline(tiny_sdxl_models, prompt, cfg_type="self")
    compiled = make_pipeline(tiny_sdxl_models, prompt, cfg_type="self")
    compiled.unet = CompiledUNet(tiny_sdxl_models.unet, Fallback(False))
    cond = tiny_sdxl_models.encode_prompt("a blue whale")
    frames = [to_input(clip(3)[k : k + 1]) for k in range(3)]
    outputs = []
    for k, frame in enumerate(frames):
        if k == 2:
            for pipeline in (eager, compiled):
                pipeline.set_embeddings(cond, pipeline.uncond)
        with torch._dynamo.config.patch(error_on_recompile=k > 0):
            outputs.append((compiled.step(frame).clone(), eager.step(frame).clone()))
    for ours, theirs in outputs:
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
