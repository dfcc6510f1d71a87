"""TensorRT with ControlNets (engine/backends/tensorrt_controlnet.py) against the stand-in `tensorrt` module: the UNet
engine with the residuals as named inputs, one engine per ControlNet with conditioning_scale as an input, both with
the same resolution profile, and a whole stream on them (the stand-in running the engines' ONNX graphs in
onnxruntime) equal to the eager stream through live scale changes, with no rebuild."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from conftest import SIZE, clip, to_input
from fake_tensorrt import make_module

from engine.backends import tensorrt as trt_backend
from engine.backends.engine_cache import controlnet_spec, engine_path, engine_spec, list_engines
from engine.backends.onnx_export import residual_names
from engine.backends.tensorrt_controlnet import (
    TensorRTControlNet,
    build_controlled_unet_backend,
    build_controlnet_backend,
    residual_layout,
)
from engine.config.schema import ControlNetConfig, FilterConfig, ModelConfig, PromptConfig, StreamConfig
from engine.pipeline.controlnet import build_random_controlnet
from engine.pipeline.models import Models
from engine.pipeline.stream import StreamPipeline

ROWS = 2
TOLERANCE = 1e-3  # ONNX Runtime vs torch, float32 (as tests/test_controlnet_onnx.py)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One engine cache for the module: the stream test loads the engines the first test built (an ONNX export of
    the tiny UNet takes seconds on the shared CI cores)."""
    return tmp_path_factory.mktemp("dreamwire-cache") / "engines"  # $DREAMWIRE_CACHE_DIR/engines


@pytest.fixture
def trt(monkeypatch, cache):
    """The stand-in, running the engines' ONNX graphs (a ControlNet engine has no ε for its formula)."""
    module, recorder = make_module()
    module.run_onnx = True
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    monkeypatch.setattr(trt_backend, "_require_cuda", lambda device, path, key: None)
    monkeypatch.setattr(trt_backend, "_cuda_stream", lambda device: 0)
    monkeypatch.setenv("DREAMWIRE_CACHE_DIR", str(cache.parent))
    module.recorder = recorder
    return module


@pytest.fixture(scope="module")
def models(tiny_taesd_models: Models) -> Models:
    return Models(**{**tiny_taesd_models.__dict__, "loaded": {}})


def _stream(**settings: object) -> StreamConfig:
    base = {"width": SIZE, "height": SIZE, "t_index_list": [16, 32], "cfg_type": "self"}
    sizes = {"trt_min_size": 64, "trt_opt_size": 64, "trt_max_size": 128}
    return StreamConfig(**{**base, **sizes, **settings})


def test_both_engines_share_the_resolution_profile_use_the_named_tensor_api_and_equal_torch(trt, models, cache):
    net = models.loaded.get(("controlnet", "random")) or build_random_controlnet(models.unet)
    layout = residual_layout(net, models.unet)
    assert [name for name, _, _ in layout] == residual_names(net)
    # the specs the stream below asks for (same model config, stream and rows): it loads these engines
    unet_spec = engine_spec(models.config, _stream(), ROWS, torch.float32, torch.device("cpu"))
    unet_spec = dataclasses.replace(unet_spec, residual_inputs=len(layout))
    net_spec = controlnet_spec(unet_spec, "random")
    build_controlled_unet_backend(models.unet, net, unet_spec)
    unet_shapes = _profile_shapes(trt)
    trt.recorder.calls.clear()
    engine = build_controlnet_backend(net, models.unet, net_spec)
    assert isinstance(engine, TensorRTControlNet) and trt.builds == 2
    net_shapes = _profile_shapes(trt)
    # the peers' bug: a ControlNet profile of other sizes than the UNet's fails at run time
    for name in ("sample", "timestep", "encoder_hidden_states"):
        assert net_shapes[name] == unet_shapes[name], name
    assert net_shapes["controlnet_cond"] == ((1, 3, 64, 64), (ROWS, 3, 64, 64), (ROWS, 3, 128, 128))
    assert net_shapes["conditioning_scale"] == ((1,), (ROWS,), (ROWS,))
    for name, channels, factor in layout:  # the UNet engine's residual inputs: 8..16 latents, over the factor
        assert unet_shapes[name] == (
            (1, channels, 8 // factor, 8 // factor),
            (ROWS, channels, 8 // factor, 8 // factor),
            (ROWS, channels, 16 // factor, 16 // factor),
        )
    files = sorted(p.name for p in cache.glob("*.engine"))
    assert files == sorted([engine_path(unet_spec, cache).name, engine_path(net_spec, cache).name])
    assert engine_path(net_spec, cache).name.startswith("controlnet-")
    assert {e.spec["kind"] for e in list_engines(cache)} == {"unet", "controlnet"}

    # the ControlNet engine equals torch, with the conditioning scale per row as an input
    generator = torch.Generator().manual_seed(0)
    x, t, e = torch.randn(ROWS, 4, 8, 8, generator=generator), torch.tensor([999, 499]), torch.randn(ROWS, 77, 32)
    image = torch.rand(ROWS, 3, 64, 64, generator=generator)
    down, mid = net(x, t, encoder_hidden_states=e, controlnet_cond=image, return_dict=False)
    for scale in ((0.0, 0.7), (1.5, 1.5)):
        per_row = torch.tensor(scale).view(-1, 1, 1, 1)
        blocks, middle = engine(x, t, e, image, per_row)
        for ours, theirs in zip((*blocks, middle), (*down, mid), strict=True):
            torch.testing.assert_close(ours, theirs * per_row, atol=TOLERANCE, rtol=TOLERANCE)
    run = trt.recorder.names("context")  # buffers once for the shape, then one execution per call
    assert run == ["set_input_shape"] * 5 + ["set_tensor_address"] * (5 + len(layout)) + ["execute_async_v3"] * 2
    assert trt.recorder.missing == []


def _profile_shapes(trt) -> dict[str, tuple]:
    return {args[0]: args[1:] for _, method, args in trt.recorder.calls if method == "set_shape"}


def _pipeline(models: Models, **stream: object) -> StreamPipeline:
    configs = [ControlNetConfig(model="random", preprocessor="canny", scale=0.8)]
    prompt = PromptConfig(text="a photo", guidance=1.0, seed=5)
    return StreamPipeline.prepared(models, _stream(**stream), prompt, FilterConfig(), controlnets=configs)


def test_a_tensorrt_stream_with_a_controlnet_equals_eager_through_live_scale_changes(trt, models, cache):
    engines, eager = _pipeline(models, acceleration="tensorrt"), _pipeline(models)
    assert engines.acceleration == "tensorrt" and isinstance(engines.controlnets.units[0].run, TensorRTControlNet)
    assert len(list(cache.glob("*.engine"))) == 2  # the UNet with residual inputs, and the ControlNet
    builds = trt.builds
    frames = to_input(clip(6))
    scales = [0.8, 0.8, 1.6, 1.6, 0.0, 0.0]  # live changes; 0 skips the net: the UNet engine gets zeros
    for i, scale in enumerate(scales):
        for p in (engines, eager):
            p.set_controlnet_scale(0, scale)
        ours, theirs = engines.step(frames[i : i + 1]), eager.step(frames[i : i + 1])
        torch.testing.assert_close(ours, theirs, atol=TOLERANCE, rtol=0)
    assert trt.builds == builds, "a scale change is never a rebuild"
    assert not engines.controlnets.active


def test_the_unet_engine_key_follows_the_residual_inputs_and_each_controlnet_has_its_own():
    spec = engine_spec(ModelConfig(id="tiny"), _stream(), ROWS, torch.float32, torch.device("cpu"))
    controlled = dataclasses.replace(spec, residual_inputs=7)
    keys = {
        spec.compute_hash(),
        controlled.compute_hash(),
        controlnet_spec(controlled, "random").compute_hash(),
        controlnet_spec(controlled, "some/controlnet").compute_hash(),
    }
    assert len(keys) == 4
    other_base = dataclasses.replace(controlled, model_id="other")
    assert controlnet_spec(other_base, "random").compute_hash() not in keys  # a net built from another base
