"""LoRA weights and the IP-Adapter on the TensorRT path, against the stand-in `tensorrt` module (as
tests/test_tensorrt_contract.py): the style inputs are in the engine, bound once to the pipeline's own buffers, and
a weight, scale or image change reaches the engine without a rebuild, a new shape or a new address."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SIZE, clip, to_input
from fake_tensorrt import make_module
from test_ip_adapter import adapter_files  # noqa: F401  (the fixture)
from test_lora import write_lora

from engine.backends import tensorrt as trt_backend
from engine.config.schema import FilterConfig, IpAdapterConfig, LoraConfig, PromptConfig, StreamConfig
from engine.pipeline.models import Models
from engine.pipeline.stream import StreamPipeline
from engine.pipeline.tiny import build_unet

pytest.importorskip("peft", reason="LoRAs need peft (pip install 'dreamwire[lora]')")


@pytest.fixture
def trt(monkeypatch, tmp_path):
    module, recorder = make_module()
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    monkeypatch.setattr(trt_backend, "_require_cuda", lambda device, path, key: None)
    monkeypatch.setattr(trt_backend, "_cuda_stream", lambda device: 0)
    monkeypatch.setenv("DREAMWIRE_CACHE_DIR", str(tmp_path / "cache"))
    module.recorder = recorder
    return module


def test_style_inputs_are_bound_once_and_read_live(trt, adapter_files, tiny_taesd_models, tmp_path: Path):  # noqa: F811
    lora = write_lora(tmp_path / "style.safetensors", seed=5)
    loras = [LoraConfig(id=lora, weight=0.5), LoraConfig(id=lora, weight=0.25, fuse=True)]
    ip_adapter = IpAdapterConfig(
        model=adapter_files["model"], image_encoder=adapter_files["image_encoder"], image=adapter_files["a"], scale=0.6
    )
    models = Models(**{**tiny_taesd_models.__dict__, "unet": build_unet(), "loaded": {}})
    stream = StreamConfig(
        width=SIZE, height=SIZE, t_index_list=[16, 32], acceleration="tensorrt", trt_min_size=64, trt_opt_size=64
    )
    pipeline = StreamPipeline(models, stream, loras=loras, ip_adapter=ip_adapter)
    pipeline.prepare(PromptConfig(text="a photo", seed=1), FilterConfig())
    assert pipeline.acceleration == "tensorrt" and trt.builds == 1
    rec = trt.recorder
    shapes = {args[0]: args[1:] for kind, method, args in rec.calls if method == "set_shape"}
    rows = 2  # cfg self, two slots
    assert shapes["lora_scales"] == ((2,), (2,), (2,))
    assert shapes["image_tokens"] == ((1, 4, 32), (rows, 4, 32), (rows, 4, 32))
    assert shapes["ip_adapter_scale"] == ((1,), (1,), (1,))

    frame = to_input(clip(1)[0][None])
    pipeline.step(frame)
    unet = pipeline.image_prompt.inner  # ImagePromptUNet → TensorRTUNet
    context = unet.context
    addresses = {name: context.addresses[name] for name in ("lora_scales", "image_tokens", "ip_adapter_scale")}
    assert addresses == {
        "lora_scales": pipeline.loras.weights.data_ptr(),
        "image_tokens": pipeline.image_prompt.tokens.data_ptr(),
        "ip_adapter_scale": pipeline.ip_adapter.scale_buffer.data_ptr(),
    }
    setup = rec.count("set_input_shape"), rec.count("set_tensor_address")
    pipeline.set_lora_weight(0, -1.5)
    pipeline.set_ip_adapter_scale(1.25)
    pipeline.set_image_tokens(pipeline.ip_adapter.embed(to_input(clip(30)[29][None])))
    pipeline.step(frame)
    assert (rec.count("set_input_shape"), rec.count("set_tensor_address")) == setup  # nothing bound again
    assert trt.builds == 1
    # what the engine read at its last call: the new values, in the buffers it was bound to once
    np.testing.assert_allclose(context._view("lora_scales", (2,)), [-1.5, 1.0])  # the fused one: unused, 1
    np.testing.assert_allclose(context._view("ip_adapter_scale", (1,)), [1.25])
    tokens = context._view("image_tokens", (rows, 4, 32))
    np.testing.assert_allclose(tokens, pipeline.image_prompt.tokens[:rows].numpy())


def test_the_engine_key_names_the_loras_and_the_adapter(trt, adapter_files, tiny_taesd_models, tmp_path: Path):  # noqa: F811
    from engine.backends.engine_cache import engine_spec

    lora = write_lora(tmp_path / "style.safetensors", seed=5)
    stream = StreamConfig(width=SIZE, height=SIZE, t_index_list=[16, 32], trt_min_size=64, trt_opt_size=64)
    spec = engine_spec(tiny_taesd_models.config, stream, 2, torch.float32, torch.device("cpu"))
    keys = {
        spec.compute_hash(),
        *(
            engine_spec(tiny_taesd_models.config, stream, 2, torch.float32, torch.device("cpu"), loras).compute_hash()
            for loras in (((lora, None),), ((lora, 0.5),), ((lora, 0.75),), ((lora, None), ("ip_adapter:x", None)))
        ),
    }
    assert len(keys) == 5  # a live LoRA, each fused weight and the adapter: each its own engine
