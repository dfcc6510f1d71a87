"""The feature bank (engine/pipeline/feature_bank.py): off is the plain UNet, the banked attention is the extended
attention over concatenated keys and values, the ring advances every `interval` frames, and a captured step
(the CUDA-graph stand-in of test_cuda_graph.py) replays what eager computes with its buffers where they were."""

from __future__ import annotations

import copy
import math
import time

import pytest
import torch
from conftest import clip, make_pipeline, to_input
from diffusers.models.attention_processor import AttnProcessor2_0
from test_cuda_graph import graphed

from engine.config.feature_bank import FeatureBankConfig
from engine.core.errors import DreamwireError
from engine.core.frames import Frame
from engine.pipeline.feature_bank import BankLayer, banked_attention, install_processors
from engine.pipeline.models import Models

BANK = {"enabled": True, "max_frames": 2, "interval": 1, "fusion_strength": 0.5, "fusion_threshold": 0.2}


def banked(models: Models, **bank: object) -> object:
    pipeline = make_pipeline(models, cfg_type="self")
    pipeline.set_feature_bank(FeatureBankConfig(**{**BANK, **bank}))
    return pipeline


def run(pipeline, frames: int = 5) -> list[torch.Tensor]:
    moving = clip(frames)
    return [pipeline.step(to_input(moving[i : i + 1])).clone() for i in range(frames)]


def test_off_is_the_plain_unet(tiny_taesd_models):
    """Off (disabled, or 0 frames) gives the frames of a UNet that never had a bank processor, while the shared
    UNet carries them (another pipeline installed them)."""
    install_processors(tiny_taesd_models.unet)
    plain_unet = copy.deepcopy(tiny_taesd_models.unet)
    plain_unet.set_attn_processor(AttnProcessor2_0())
    plain = Models(**{**tiny_taesd_models.__dict__, "unet": plain_unet})
    expected = run(make_pipeline(plain, cfg_type="self"), 4)
    for bank in ({"enabled": False}, {"max_frames": 0}):
        off = banked(tiny_taesd_models, **bank)
        assert not off.feature_bank.active
        for got, want in zip(run(off, 4), expected, strict=True):
            assert torch.equal(got, want)
    on = run(banked(tiny_taesd_models), 4)
    assert torch.equal(on[0], expected[0]), "an empty bank is the plain attention"
    assert not torch.equal(on[2], expected[2]), "with frames in the bank the output changes"


def reference_attention(attn, hidden, keys, values, attend):
    """Extended attention written out: softmax(q·kᵀ/√d) v per head over the keys of this frame and of the ring
    slots that hold a frame, then the output projection. hidden [B, T, C]; keys, values [B, T', D]."""
    batch, tokens, _ = hidden.shape
    heads = attn.heads
    q = hidden @ attn.to_q.weight.T
    k = torch.cat([hidden @ attn.to_k.weight.T, keys[:, attend]], dim=1)
    v = torch.cat([hidden @ attn.to_v.weight.T, values[:, attend]], dim=1)
    d = q.shape[-1] // heads
    split = lambda x: x.view(batch, -1, heads, d).transpose(1, 2)  # noqa: E731
    weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(d), dim=-1)
    out = (weights @ split(v)).transpose(1, 2).reshape(batch, tokens, heads * d)
    return out @ attn.to_out[0].weight.T + attn.to_out[0].bias


@pytest.mark.parametrize("batch", [2, 4])  # Plain/self: B = r; full: [uncond ; cond] = 2r
def test_banked_attention_is_extended_attention_over_concatenated_keys(tiny_taesd_models, batch):
    unet = tiny_taesd_models.unet
    attn = unet.get_submodule("down_blocks.1.attentions.0.transformer_blocks.0.attn1")
    rows, frames, tokens = 2, 3, 16
    width, channels = attn.to_k.out_features, attn.to_out[0].out_features
    generator = torch.Generator().manual_seed(0)
    randn = lambda *shape: torch.randn(*shape, generator=generator)  # noqa: E731
    layer = BankLayer(
        rows=rows,
        keys=randn(rows, frames, tokens, width),
        values=randn(rows, frames, tokens, width),
        outputs=randn(rows, frames, tokens, channels),  # fused at strength 0: no change
        fresh_keys=torch.zeros(rows, tokens, width),
        fresh_values=torch.zeros(rows, tokens, width),
        fresh_outputs=torch.zeros(rows, tokens, channels),
        valid=torch.tensor([True, False, True]),
        strength=torch.tensor(0.0),
        threshold=torch.tensor(1.0),
    )
    hidden = randn(batch, tokens, channels)
    out = banked_attention(attn, hidden, layer)
    twins = [i % rows for i in range(batch - rows)] + list(range(rows))  # the uncond rows read their cond twin's
    attend = torch.tensor([True] * tokens + [False] * tokens + [True] * tokens)
    past_keys, past_values = (ring.reshape(rows, frames * tokens, width)[twins] for ring in (layer.keys, layer.values))
    expected = reference_attention(attn, hidden, past_keys, past_values, attend)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    # this frame's conditional rows are kept for the ring: keys, values and the (unfused) output
    torch.testing.assert_close(layer.fresh_keys, hidden[-rows:] @ attn.to_k.weight.T, atol=1e-5, rtol=0)
    torch.testing.assert_close(layer.fresh_outputs, expected[-rows:], atol=1e-5, rtol=0)


def test_fusion_blends_with_the_nearest_bank_feature_above_the_threshold():
    from engine.pipeline.feature_bank import fuse

    out = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # [B=1, T=2, C=2]
    bank = torch.tensor([[[2.0, 0.1], [5.0, 5.0], [0.0, -1.0], [0.0, 3.0]]])  # [1, F·T=4, C]
    valid = torch.tensor([True, True, False, False])  # the second slot is empty: [0, 3] must not be chosen
    fused = fuse(out, bank, valid, torch.tensor(0.5), torch.tensor(0.9))
    # token 0: nearest [2, 0.1] (cos 0.999) → halfway; token 1: nearest valid is [5, 5] (cos 0.707 < 0.9) → kept
    torch.testing.assert_close(fused, torch.tensor([[[1.5, 0.05], [0.0, 1.0]]]))


def test_the_ring_advances_every_interval_frames(tiny_taesd_models):
    pipeline = banked(tiny_taesd_models, max_frames=2, interval=3)
    bank = pipeline.feature_bank
    layer = next(iter(bank.layers.values()))
    moving = clip(8)
    heads, fills = [], []
    for i in range(8):
        before = layer.keys.clone()
        pipeline.step(to_input(moving[i : i + 1]))
        heads.append(int(bank.head))
        fills.append(int(bank.fill))
        slot = (i // 3) % 2
        if i % 3 == 0:  # an update frame: this frame's keys went into the head slot, the other slot is untouched
            assert torch.equal(layer.keys[:, slot], layer.fresh_keys)
            assert torch.equal(layer.keys[:, 1 - slot], before[:, 1 - slot])
        else:
            assert torch.equal(layer.keys, before)
    assert heads == [1, 1, 1, 0, 0, 0, 1, 1]
    assert fills == [1, 1, 1, 2, 2, 2, 2, 2]
    pipeline.prepare(pipeline_prompt())  # a reset empties the bank, its buffers stay
    assert int(bank.fill) == int(bank.head) == int(bank.frame) == 0 and not bank.valid.any()


def pipeline_prompt():
    from engine.config.schema import PromptConfig

    return PromptConfig(text="a photo")


def bank_addresses(pipeline) -> list[int]:
    bank = pipeline.feature_bank
    tensors = [t for layer in bank.layers.values() for t in vars(layer).values() if isinstance(t, torch.Tensor)]
    return [t.data_ptr() for t in (*tensors, bank.head, bank.fill, bank.frame, bank.interval, bank.strength)]


def test_live_numbers_need_no_recapture_and_frames_recapture(tiny_taesd_models):
    eager = banked(tiny_taesd_models, interval=2)
    replayed = banked(tiny_taesd_models, interval=2)
    runner = graphed(replayed)
    addresses = bank_addresses(replayed)
    moving = clip(10)
    changes = {3: {"fusion_strength": 0.9}, 4: {"interval": 1}, 5: {"fusion_threshold": 0.0}}
    for i in range(7):
        for pipeline in (eager, replayed):
            if i in changes:
                pipeline.set_feature_bank(FeatureBankConfig(**{**BANK, "interval": 2, **changes[i]}))
        frame = to_input(moving[i : i + 1])
        torch.testing.assert_close(replayed.step(frame), eager.step(frame), atol=1e-6, rtol=0)
    assert runner.captures == 1, "interval and fusion are device numbers: no re-capture"
    assert bank_addresses(replayed) == addresses
    for pipeline in (eager, replayed):  # another ring size: new buffers, captured again
        pipeline.set_feature_bank(FeatureBankConfig(**{**BANK, "max_frames": 4}))
    for i in range(7, 10):
        frame = to_input(moving[i : i + 1])
        torch.testing.assert_close(replayed.step(frame), eager.step(frame), atol=1e-6, rtol=0)
    assert runner.captures == 2


def test_cfg_full_and_initialize_keep_only_the_conditional_rows(tiny_taesd_models):
    for cfg_type in ("full", "initialize"):
        pipeline = make_pipeline(tiny_taesd_models, {"guidance": 1.8}, cfg_type=cfg_type)
        pipeline.set_feature_bank(FeatureBankConfig(**BANK))
        outputs = run(pipeline, 3)
        assert all(torch.isfinite(o).all() for o in outputs)
        layer = next(iter(pipeline.feature_bank.layers.values()))
        assert layer.keys.shape[0] == pipeline.slots * pipeline.frames  # n·f rows, whatever the CFG rows


def test_a_bank_the_stream_cannot_run_is_one_clear_error(tiny_taesd_models):
    pipeline = make_pipeline(tiny_taesd_models, use_denoising_batch=False)
    with pytest.raises(DreamwireError, match="use_denoising_batch"):
        pipeline.set_feature_bank(FeatureBankConfig(**BANK))
    pipeline.set_feature_bank(FeatureBankConfig(enabled=False))  # off is always allowed


def test_live_engine_changes_the_bank_without_a_rebuild(engine):
    live = engine()
    live.step()
    events = []
    live.add_listener(events.append)
    live.set("feature_bank.enabled", True)
    live.set("feature_bank.max_frames", 3)
    live.apply_pending_controls()
    assert [e.kind for e in events] == ["applied", "applied"]
    assert live.pipeline.feature_bank.frames == 3 and not live.rebuilding
    assert live.preset.feature_bank.max_frames == 3
    frame = Frame(clip(1)[0], 0, time.perf_counter())
    first, second = live.process([frame]), live.process([frame])
    assert first[0].image.shape == second[0].image.shape == frame.image.shape
