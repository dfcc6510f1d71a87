"""The feature bank under stream.acceleration tensorrt, against the stand-in `tensorrt` module (no GPU here): the
engine is built from the banked graph with the bank's inputs and outputs, its key names the ring size, the rings
and this frame's buffers are bound by address (no copy), and the ring is updated after each call."""

from __future__ import annotations

import time

import torch
from conftest import SIZE, clip, to_input
from test_tensorrt_contract import trt  # noqa: F401  (the stand-in installed as `tensorrt`)

from engine.config.feature_bank import FeatureBankConfig
from engine.config.schema import FilterConfig, PromptConfig, StreamConfig
from engine.core.errors import DreamwireError
from engine.pipeline.stream import StreamPipeline

BANK = FeatureBankConfig(enabled=True, max_frames=2, interval=1)


def tensorrt_pipeline(models, bank: FeatureBankConfig) -> StreamPipeline:
    stream = StreamConfig(
        width=SIZE,
        height=SIZE,
        t_index_list=[16, 32],
        cfg_type="self",
        acceleration="tensorrt",
        trt_min_size=64,
        trt_opt_size=64,
        trt_max_size=128,
    )
    pipeline = StreamPipeline(models, stream, feature_bank=bank)
    pipeline.prepare(PromptConfig(text="a photo"), FilterConfig())
    return pipeline


def test_the_bank_is_the_engines_inputs_and_outputs(trt, tiny_taesd_models, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("DREAMWIRE_CACHE_DIR", str(tmp_path))
    pipeline = tensorrt_pipeline(tiny_taesd_models, BANK)
    assert pipeline.acceleration == "tensorrt"
    bank, engine = pipeline.feature_bank, pipeline._banked.inner
    rec = trt.recorder
    shapes = {args[0]: args[1:] for kind, method, args in rec.calls if method == "set_shape"}
    # ring [r, F·T, D]: tokens of the first layer (down_blocks.1, 1/2 scale) from 64 to 128 px = 8..16 latents
    rows, frames = bank.rows, bank.frames
    assert shapes["bank_keys_0"] == ((rows, frames * 16, 64), (rows, frames * 16, 64), (rows, frames * 64, 64))
    assert {"bank_valid", "fusion_strength", "new_keys_0", "new_outputs_1"} <= set(engine.engine.names)
    assert engine.key != tensorrt_pipeline(tiny_taesd_models, BANK.model_copy(update={"max_frames": 4})).unet.inner.key

    layer = next(iter(bank.layers.values()))
    layer.fresh_keys.fill_(0.25)  # stands in for what the engine writes into new_keys_0
    pipeline.step(to_input(clip(1)))
    addresses = {args[0]: args[1] for kind, method, args in rec.calls if method == "set_tensor_address"}
    assert addresses["bank_keys_0"] == layer.keys.data_ptr()  # the ring itself, flat: no copy
    assert addresses["new_keys_0"] == layer.fresh_keys.data_ptr()
    assert addresses["bank_valid"] == bank.valid.data_ptr() and addresses["fusion_strength"] == bank.strength.data_ptr()
    assert torch.equal(layer.keys[:, 0], torch.full_like(layer.keys[:, 0], 0.25)), "stored after the call"
    assert int(bank.fill) == 1 and rec.count("execute_async_v3") == 1


def test_a_new_ring_size_under_tensorrt_is_a_rebuild(trt, tiny_taesd_models, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("DREAMWIRE_CACHE_DIR", str(tmp_path))
    pipeline = tensorrt_pipeline(tiny_taesd_models, BANK)
    bigger = BANK.model_copy(update={"max_frames": 3})
    assert pipeline.feature_bank_needs_rebuild(bigger)
    assert not pipeline.feature_bank_needs_rebuild(BANK.model_copy(update={"fusion_strength": 0.1}))
    try:
        pipeline.set_feature_bank(bigger)
    except DreamwireError as error:
        assert "a rebuild" in str(error)
    else:
        raise AssertionError("a ring size the engine was not built for must be refused")
    pipeline.set_feature_bank(BANK.model_copy(update={"interval": 3}))  # live numbers stay live
    assert int(pipeline.feature_bank.interval) == 3


def test_the_live_engine_rebuilds_for_a_new_ring_size_under_tensorrt(trt, tiny_taesd_models, tmp_path, monkeypatch):  # noqa: F811
    from conftest import preset

    from engine.live.loop import LiveEngine

    monkeypatch.setenv("DREAMWIRE_CACHE_DIR", str(tmp_path))
    config = preset(acceleration="tensorrt", trt_min_size=64, trt_opt_size=64, trt_max_size=128)
    config.feature_bank = BANK
    engine = LiveEngine(config, models=tiny_taesd_models)
    try:
        events = []
        engine.add_listener(events.append)
        engine.set("feature_bank.max_frames", 3)
        engine.set("feature_bank.fusion_strength", 0.2)  # live: waits for the rebuild, then applies in place
        deadline = time.perf_counter() + 120
        engine.apply_pending_controls()
        while engine.rebuilding or not engine.controls.empty():
            assert time.perf_counter() < deadline, "the rebuild did not finish"
            time.sleep(0.01)
            engine.apply_pending_controls()
        assert [e.path for e in events if e.kind == "applied"] == [
            "feature_bank.max_frames",
            "rebuild",
            "feature_bank.fusion_strength",
        ]
        assert engine.pipeline.feature_bank.frames == 3 and engine.preset.feature_bank.max_frames == 3
        assert engine.pipeline.acceleration == "tensorrt" and engine.preset.feature_bank.fusion_strength == 0.2
    finally:
        engine.close()
