"""The live engine driven synchronously (no threads) and threaded, on the tiny model."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from conftest import SIZE, clip

from engine.core.errors import DreamwireError
from engine.core.frames import Frame
from engine.live.loop import LiveEngine


def frames_of(images) -> list[list[Frame]]:
    return [[Frame(image, i, time.perf_counter())] for i, image in enumerate(images)]


def wait_for_encoder(engine: LiveEngine, key: str = "cond", timeout: float = 10.0) -> None:
    """Drive apply_pending_controls until the prompt encoder has delivered (as the loop would)."""
    deadline = time.perf_counter() + timeout
    engine.apply_pending_controls()  # the change itself is queued until the engine applies it
    while engine.prompts.encoding(key):
        assert time.perf_counter() < deadline, "prompt encoding did not finish"
        time.sleep(0.005)
        engine.apply_pending_controls()


def test_control_change_is_applied_between_frames(engine):
    live = engine()
    inputs = frames_of(clip(3))
    live.process(inputs[0])
    live.set("prompt.guidance", 3.0)
    assert live.pipeline.cfg.guidance == 1.5  # queued, not applied mid-frame
    live.apply_pending_controls()
    assert live.pipeline.cfg.guidance == 3.0


def test_prompt_change_swaps_embeddings_only_and_loses_no_frame(engine):
    live = engine()
    inputs = frames_of(clip(8))
    outputs = [live.process(f) for f in inputs[:3]]
    latents, stock, noise = live.pipeline.x_t.clone(), live.pipeline.stock_noise.clone(), live.pipeline.noise.clone()
    live.set("prompt.text", "a blue whale")
    wait_for_encoder(live)
    # the change itself touched neither the latent buffer nor the residual noise nor the fixed noise
    assert torch.equal(live.pipeline.x_t, latents)
    assert torch.equal(live.pipeline.stock_noise, stock) and torch.equal(live.pipeline.noise, noise)
    # and the very next frame renders with the new prompt
    expected = live.models.encode_prompt("a blue whale")
    assert torch.equal(live.pipeline.cond, expected)
    assert torch.equal(live.pipeline.embeddings[0], expected[0])
    outputs += [live.process(f) for f in inputs[3:]]
    assert [o[0].index for o in outputs] == list(range(8))  # one output per input, none lost


def test_old_prompt_renders_until_the_new_embedding_is_ready(engine):
    live = engine()
    before = live.pipeline.cond.clone()
    release = threading.Event()
    encode = live.encoder._encode_fn if hasattr(live.encoder, "_encode_fn") else None
    assert encode is not None

    def slow(text: str) -> torch.Tensor:
        release.wait(60)  # released below; a long bound so a loaded machine cannot release it early
        return encode(text)

    live.encoder._encode_fn = slow
    live.set("prompt.text", "a slow prompt")
    for f in frames_of(clip(3)):
        live.apply_pending_controls()
        live.process(f)
        assert torch.equal(live.pipeline.cond, before)
    release.set()
    wait_for_encoder(live)
    assert not torch.equal(live.pipeline.cond, before)


@pytest.mark.parametrize("cfg_type", ["full", "initialize", "self"])
def test_prompt_change_matches_a_fresh_prepare_once_the_buffer_turned_over(engine, cfg_type):
    """The reference drops the negative embeddings here (shape errors) and flashes; we must equal a fresh run."""
    n, change_at = 3, 3
    images = clip(9)
    changed = engine(cfg_type=cfg_type, t_index_list=[10, 25, 40])
    fresh = engine(cfg_type=cfg_type, t_index_list=[10, 25, 40])
    fresh.set("prompt.text", "a blue whale")
    wait_for_encoder(fresh)
    fresh.pipeline.prepare(fresh.preset.prompt, fresh.preset.filter)  # fresh start with the new prompt
    a, b = [], []
    for k, f in enumerate(frames_of(images)):
        if k == change_at:
            changed.set("prompt.text", "a blue whale")
            wait_for_encoder(changed)
        a.append(changed.process(f)[0].image)
        b.append(fresh.process(f)[0].image)
    for k in range(change_at + n - 1, len(images)):
        assert (a[k].astype(int) - b[k].astype(int)).__abs__().max() <= 1, k
    assert any((a[k].astype(int) - b[k].astype(int)).__abs__().max() > 1 for k in range(1, change_at))


def test_out_of_range_value_is_rejected_and_the_old_value_kept(engine):
    live = engine()
    with pytest.raises(DreamwireError, match=r"prompt.guidance: 99 .*float in \[0, 20\]"):
        live.set("prompt.guidance", 99)
    with pytest.raises(DreamwireError, match=r"unknown parameter 'prompt.colour'"):
        live.set("prompt.colour", "red")
    with pytest.raises(DreamwireError, match=r"t_index_list \[40, 10\] must be strictly ascending"):
        live.set("stream.t_index_list", [40, 10])
    live.apply_pending_controls()
    assert live.pipeline.cfg.guidance == 1.5 and live.preset.prompt.guidance == 1.5


def test_t_index_list_change_keeps_buffers(engine):
    live = engine()
    for f in frames_of(clip(2)):
        live.process(f)
    latents = live.pipeline.x_t.clone()
    live.set("stream.t_index_list", [5, 45])
    live.apply_pending_controls()
    assert torch.equal(live.pipeline.x_t, latents)
    assert live.pipeline.tables.timesteps.tolist() == [899, 99]


def test_guidance_transition_moves_over_frames_and_ends_exactly(engine):
    live = engine()
    live.set("prompt.guidance", 2.5, frames=4)
    seen = []
    for f in frames_of(clip(6)):
        live.apply_pending_controls()
        seen.append(float(live.pipeline.cfg.guidance))  # the device scalar the step reads
        live.process(f)
    assert seen[0] < seen[1] < seen[2] < 2.5 and seen[-1] == 2.5


def test_prompt_and_seed_blends_with_single_weight_equal_the_single_one(engine):
    live = engine()
    live.blend_prompts([("a blue whale", 1.0), ("a red fox", 0.0)], method="slerp")
    wait_for_encoder(live)
    assert torch.equal(live.pipeline.cond, live.models.encode_prompt("a blue whale"))
    live.blend_seeds([(11, 1.0), (12, 0.0)])
    live.apply_pending_controls()
    assert torch.equal(live.pipeline.noise, live.pipeline.noise_for_seed(11))
    live.blend_seeds([(11, 0.5), (12, 0.5)])
    live.apply_pending_controls()
    mid = live.pipeline.noise
    assert float(mid.norm()) == pytest.approx(float(live.pipeline.noise_for_seed(11).norm()), rel=0.03)
    with pytest.raises(DreamwireError, match=r"seed.blend weights \[-1.0\]"):
        live.blend_seeds([(1, -1.0)])


def test_live_seed_change_equals_a_prepare_with_that_seed(engine):
    live = engine()
    live.set("prompt.seed", 9)
    live.apply_pending_controls()
    other = engine()
    other.set("prompt.seed", 9)
    other.apply_pending_controls()
    other.pipeline.prepare(other.preset.prompt, other.preset.filter)
    assert torch.equal(live.pipeline.noise, other.pipeline.noise)


def test_rebuild_holds_the_last_frame_then_continues(engine):
    live = engine()
    sent: list[Frame] = []
    publish = live.io.publish
    live.io.publish = lambda frames: (sent.extend(frames), publish(frames))  # type: ignore[method-assign]
    images = clip(30)
    for k in range(2):
        live.input_slot.put(Frame(images[k], k, time.perf_counter()))
        live.step()
    live.set("stream.width", 128)
    live.set("stream.height", 128)
    deadline = time.perf_counter() + 60
    k, held = 2, 0
    # Width and height may land in one rebuild or two (a loaded machine may end a drain between them).
    while (live.pipeline.config.width, live.pipeline.config.height) != (128, 128) or live.rebuilding:
        assert time.perf_counter() < deadline
        live.apply_pending_controls()
        rebuilding, last = live.rebuilding, sent[-1]
        live.input_slot.put(Frame(images[k % 30], k, time.perf_counter()))
        live.step()
        if rebuilding:  # the last frame, re-sent while rebuilding
            assert sent[-1] is last
            held += 1
        k += 1
    assert held
    live.input_slot.put(Frame(images[0], k, time.perf_counter()))
    live.step()
    assert sent[-1].image.shape == (128, 128, 3), [(f.index, f.image.shape) for f in sent]


def test_failed_rebuild_keeps_the_running_pipeline(engine, caplog):
    live = engine()
    pipeline = live.pipeline
    live.set("model.id", "/no/such/model")
    live.apply_pending_controls()
    deadline = time.perf_counter() + 20
    while live.rebuilding:
        assert time.perf_counter() < deadline
        time.sleep(0.01)
        live.apply_pending_controls()
    assert live.pipeline is pipeline
    assert "rebuild failed, keeping the running pipeline: model folder not found" in caplog.text
    assert live.requested.snapshot().model.id == "tiny"


def test_io_change_with_a_bad_uri_is_refused_to_the_sender(engine, tmp_path, monkeypatch):
    live = engine()
    with pytest.raises(DreamwireError, match=r"unknown source scheme 'webcam'"):
        live.set("io.input", "webcam:0")
    monkeypatch.setattr("sys.platform", "linux")
    with pytest.raises(DreamwireError, match=r"spout: needs Windows \(this is Linux\)"):
        live.set("io.outputs", ["spout:dreamwire"])
    assert live.requested.snapshot().io.outputs == []
    live.set("io.outputs", [f"file:{tmp_path / 'o.npy'}"])
    live.apply_pending_controls()
    assert [w.alive for w, _ in live.sink_workers] == [True]
    live.close()


def test_prompt_transition_morphs_and_lands_exactly(engine):
    live = engine()
    start = live.pipeline.cond.clone()
    target = live.models.encode_prompt("a blue whale")
    live.set("prompt.text", "a blue whale", frames=3)
    wait_for_encoder(live)
    distances = []
    for f in frames_of(clip(4)):
        live.process(f)
        live.apply_pending_controls()
        distances.append(float((live.pipeline.cond - target).norm()))
    assert distances[0] < float((start - target).norm())  # moved towards the target, not cut
    assert distances[0] > 0 and distances[-1] == 0.0  # and lands exactly
    assert distances == sorted(distances, reverse=True)


def test_seed_transition_keeps_the_noise_gaussian_and_lands_exactly(engine):
    live = engine()
    target = live.pipeline.noise_for_seed(9)
    norm = float(target.norm())
    live.set("prompt.seed", 9, frames=4)
    mid_norms = []
    for f in frames_of(clip(5)):
        live.apply_pending_controls()
        mid_norms.append(float(live.pipeline.noise.norm()))
        live.process(f)
    assert all(abs(n - norm) / norm < 0.05 for n in mid_norms)  # slerp: no contrast dip mid-way
    assert torch.equal(live.pipeline.noise, target)


def test_pause_holds_and_reset_restarts(engine):
    live = engine()
    sent: list[Frame] = []
    live.io.publish = lambda frames: sent.extend(frames)  # type: ignore[method-assign]
    images = clip(6)
    live.input_slot.put(Frame(images[0], 0, time.perf_counter()))
    live.step()
    live.pause()
    live.apply_pending_controls()
    live.input_slot.put(Frame(images[1], 1, time.perf_counter()))
    assert live.step() and len(sent) == 1  # paused: input taken, nothing produced
    live.pause(False)
    live.reset()
    live.apply_pending_controls()
    assert torch.count_nonzero(live.pipeline.x_t) == 0  # reset: empty buffers
    live.input_slot.put(Frame(images[2], 2, time.perf_counter()))
    live.step()
    assert len(sent) == 2


def test_txt2img_engine_runs_without_looking_at_input(engine):
    moving, black = engine(mode="txt2img", t_index_list=[0, 25]), engine(mode="txt2img", t_index_list=[0, 25])
    images = clip(3)
    out = [moving.process(f)[0].image for f in frames_of(images)]
    other = [black.process(f)[0].image for f in frames_of(np.zeros_like(images))]
    assert out[0].shape == (SIZE, SIZE, 3)
    assert (out[2].astype(int) - out[1].astype(int)).__abs__().max() > 0  # the frames still change (fresh noise)
    for a, b in zip(out, other, strict=True):  # and another input changes nothing
        assert np.array_equal(a, b)
