"""The stream pipeline on the tiny model: Stream Batch, CFG row counts, frame buffers, seeds, txt2img."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SIZE, clip, count_unet, make_pipeline, to_input

from engine.config.schema import StreamConfig
from engine.core.errors import DreamwireError
from engine.pipeline.stream import StreamPipeline


def run(pipeline, frames) -> list[torch.Tensor]:
    f = pipeline.frames
    return [pipeline.step(to_input(frames[i : i + f])).clone() for i in range(0, len(frames), f)]


@pytest.mark.parametrize("do_add_noise", [True, False])
@pytest.mark.parametrize("cfg_type", ["none", "full"])
def test_stream_batch_equals_sequential_denoise(tiny_models, cfg_type, do_add_noise):
    """Frame k leaves the Stream Batch n − 1 calls later, equal to the n-step sequential denoise of frame k."""
    frames, n = clip(6), 3
    settings = dict(t_index_list=[10, 25, 40], cfg_type=cfg_type, do_add_noise=do_add_noise)
    prompt = {"guidance": 1.5, "negative": "blurry"}
    batch = run(make_pipeline(tiny_models, prompt, use_denoising_batch=True, **settings), frames)
    sequential = run(make_pipeline(tiny_models, prompt, use_denoising_batch=False, **settings), frames)
    for k in range(len(frames) - (n - 1)):
        torch.testing.assert_close(batch[k + n - 1], sequential[k], atol=1e-5, rtol=0)
    # and the warm-up outputs really are different frames (the check above is not vacuous)
    assert (batch[0] - sequential[0]).abs().max() > 1e-3


@pytest.mark.parametrize(("n", "f"), [(2, 1), (3, 2)])
@pytest.mark.parametrize(("cfg_type", "rows"), [("none", "nf"), ("self", "nf"), ("initialize", "n1f"), ("full", "2nf")])
def test_unet_rows_per_frame(tiny_models, cfg_type, rows, n, f):
    pipeline = make_pipeline(
        tiny_models, {"guidance": 1.4}, cfg_type=cfg_type, t_index_list=[5, 20, 35][:n], frame_buffer_size=f
    )
    counter = count_unet(pipeline)
    run(pipeline, clip(3 * f))
    expected = {"nf": n * f, "n1f": (n + 1) * f, "2nf": 2 * n * f}[rows]
    assert counter.rows == [expected] * 3


def test_guidance_at_most_one_drops_the_uncond_rows(tiny_models):
    """As in the reference: full and initialize with guidance <= 1 run cond rows only."""
    for cfg_type in ("full", "initialize"):
        pipeline = make_pipeline(tiny_models, {"guidance": 1.0}, cfg_type=cfg_type)
        counter = count_unet(pipeline)
        run(pipeline, clip(2))
        assert counter.rows == [2, 2]


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("f", [2, 3])
def test_frame_buffer_size_above_one(tiny_models, f, n):
    """The reference crashes here (c_skip/c_out not repeated per frame)."""
    pipeline = make_pipeline(tiny_models, cfg_type="self", t_index_list=[8, 24, 40][:n], frame_buffer_size=f)
    counter = count_unet(pipeline)
    outputs = run(pipeline, clip(4 * f))
    assert len(outputs) == 4
    assert all(o.shape == (f, 3, SIZE, SIZE) and torch.isfinite(o).all() for o in outputs)
    assert counter.rows == [n * f] * 4
    assert pipeline.x_t.shape == (n * f, 4, SIZE // 8, SIZE // 8)
    # the f frames of one step are different frames, not copies
    assert (outputs[-1][0] - outputs[-1][1]).abs().max() > 1e-4


def test_same_seed_same_frames_other_seed_other_frames(tiny_models):
    frames = clip(4)
    first = run(make_pipeline(tiny_models, {"seed": 7}), frames)
    again = run(make_pipeline(tiny_models, {"seed": 7}), frames)
    other = run(make_pipeline(tiny_models, {"seed": 8}), frames)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    assert all((a - c).abs().max() > 1e-4 for a, c in zip(first[1:], other[1:], strict=True))


def test_prepare_again_resets_to_the_same_frames(tiny_models):
    """A second prepare with the same seed restarts the stream exactly (the reference loses the seed)."""
    pipeline = make_pipeline(tiny_models, {"seed": 3})
    first = run(pipeline, clip(3))
    from engine.config.schema import PromptConfig

    pipeline.prepare(PromptConfig(text="a photo", seed=3))
    second = run(pipeline, clip(3))
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_txt2img_is_seeded_and_turbo_is_one_step(tiny_models):
    a = make_pipeline(tiny_models, {"seed": 1}, mode="txt2img").step()
    b = make_pipeline(tiny_models, {"seed": 1}, mode="txt2img").step()
    assert torch.equal(a, b)
    turbo = make_pipeline(tiny_models, mode="txt2img-turbo", t_index_list=[0], cfg_type="none")
    counter = count_unet(turbo)
    out = turbo.step()
    assert out.shape == (1, 3, SIZE, SIZE) and counter.rows == [1]
    assert torch.equal(turbo.tables.c_skip, torch.zeros(1, 1, 1, 1)) and torch.equal(
        turbo.tables.c_out, torch.ones(1, 1, 1, 1)
    )


def test_tables_follow_the_lcm_schedule(tiny_models):
    pipeline = make_pipeline(tiny_models, t_index_list=[0, 16, 49], frame_buffer_size=2)
    assert pipeline.tables.timesteps.tolist() == [999, 999, 679, 679, 19, 19]  # T[k] = 999 − 20k, per frame
    assert pipeline.tables.alpha_next[-1].item() == 1.0 and pipeline.tables.beta_next[-1].item() == 1.0


def test_width_not_a_multiple_of_the_vae_factor(tiny_models):
    with pytest.raises(ValueError, match=r"multiple of 8"):  # the schema: SD-family VAEs have factor 8
        make_pipeline(tiny_models, width=100)
    # The pipeline checks its own VAE's factor too (a config made without the schema's check stands in for a VAE
    # with another factor).
    config = StreamConfig(width=64, height=64, t_index_list=[16, 32]).model_copy(update={"width": 100})
    with pytest.raises(DreamwireError, match=r"stream.width 100 is not a multiple of the VAE factor 8"):
        StreamPipeline(tiny_models, config)


@pytest.mark.parametrize("pinned", [False, True], ids=["pageable", "pinned-buffer-path"])
def test_host_frames_equal_to_uint8_and_are_fresh_arrays(tiny_taesd_models, monkeypatch, pinned):
    """HostFrames (the sink's copy, through a pinned buffer on CUDA) gives exactly what to_uint8 gives, and a new
    array each call: a sink that keeps frame k must not see frame k + 1 written over it. On this CPU-only machine
    the pinned path runs with a plain host tensor in place of page-locked memory: same copies, same order."""
    from engine.pipeline import image as image_module

    if pinned:
        monkeypatch.setattr(image_module, "_pinned", lambda shape, device: torch.empty(shape, dtype=torch.uint8))
    pipeline = make_pipeline(tiny_taesd_models)
    load, to_host = pipeline.frame_loader(), pipeline.host_frames()
    assert (to_host.pinned is not None) == pinned
    frames = clip(3)
    outputs = [(to_host(out := pipeline.step(load(frames[i : i + 1]))), image_module.to_uint8(out)) for i in range(3)]
    for host, expected in outputs:
        np.testing.assert_array_equal(host, expected)
    assert not np.shares_memory(outputs[1][0], outputs[2][0])
    assert not np.array_equal(outputs[1][0], outputs[2][0])  # the pattern moves: equal would mean a shared buffer


def test_frame_loader_pinned_path_equals_the_direct_one(monkeypatch):
    from engine.pipeline import image as image_module

    frames = clip(2)
    direct = image_module.FrameLoader(2, SIZE, SIZE, torch.device("cpu"), torch.float32)(frames).clone()
    monkeypatch.setattr(image_module, "_pinned", lambda shape, device: torch.empty(shape, dtype=torch.uint8))
    loader = image_module.FrameLoader(2, SIZE, SIZE, torch.device("cpu"), torch.float32)
    assert loader.pinned is not None
    torch.testing.assert_close(loader(frames), direct, rtol=0, atol=0)
