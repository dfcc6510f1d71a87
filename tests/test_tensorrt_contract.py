"""The TensorRT backend against a stand-in `tensorrt` module (no GPU or TensorRT here): the TensorRT 10 named-tensor
call sequence, one buffer allocation per shape, the engine cache path, atomic writes and no silent fallback."""

from __future__ import annotations

import dataclasses
import logging
import sys

import pytest
import torch
from fake_tensorrt import make_module

from engine.backends import tensorrt as trt_backend
from engine.backends.engine_cache import engine_path, engine_spec
from engine.config.schema import ModelConfig, StreamConfig
from engine.core.errors import DreamwireError

ROWS = 2


@pytest.fixture
def trt(monkeypatch):
    """The stand-in installed as `tensorrt`; CPU tensors allowed and a null stream handle (the stand-in reads CPU
    memory where TensorRT would read GPU memory)."""
    module, recorder = make_module()
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    monkeypatch.setattr(trt_backend, "_require_cuda", lambda device, path, key: None)
    monkeypatch.setattr(trt_backend, "_cuda_stream", lambda device: 0)
    module.recorder = recorder
    return module


@pytest.fixture
def spec():
    stream = StreamConfig(
        width=64, height=64, t_index_list=[16, 32], trt_min_size=64, trt_opt_size=64, trt_max_size=128
    )
    return engine_spec(ModelConfig(id="tiny", vae="tiny-taesd"), stream, ROWS, torch.float32, torch.device("cpu"))


def inputs(rows: int = ROWS, side: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.randn(rows, 4, side, side), torch.tensor([999, 499, 250, 5][:rows]), torch.randn(rows, 77, 32)


def test_build_uses_the_named_tensor_api_and_calls_run_on_the_engine(trt, spec, tiny_models, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        unet = trt_backend.build_unet_backend(tiny_models.unet, spec, cache_dir=tmp_path)
    rec = trt.recorder
    assert ("builder", "create_network", (1 << trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED,)) in rec.calls
    shapes = {args[0]: args[1:] for kind, method, args in rec.calls if method == "set_shape"}
    assert shapes == {  # batch 1..rows, 64..128 pixels = 8..16 latents, tuned for 64 pixels and all rows
        "sample": ((1, 4, 8, 8), (ROWS, 4, 8, 8), (ROWS, 4, 16, 16)),
        "timestep": ((1,), (ROWS,), (ROWS,)),
        "encoder_hidden_states": ((1, 77, 32), (ROWS, 77, 32), (ROWS, 77, 32)),
    }
    assert "TensorRT build: Building engine (2 steps)" in caplog.text  # the progress display

    x, t, e = inputs()
    eps = unet(x, t, e)
    torch.testing.assert_close(eps, 2 * x + t.reshape(-1, 1, 1, 1).float())  # read from and written to our buffers
    run = rec.names("context")
    assert run == ["set_input_shape"] * 3 + ["set_tensor_address"] * 4 + ["execute_async_v3"]
    assert {args[0] for _, m, args in rec.calls if m == "set_tensor_address"} == {
        "sample",
        "timestep",
        "encoder_hidden_states",
        "latent",
    }
    assert rec.missing == []  # no binding-index API, no execute_v2, no weak-typing flags asked for
    assert not any("binding" in name for name in rec.names())


def test_buffers_are_allocated_once_per_shape(trt, spec, tiny_models, tmp_path):
    unet = trt_backend.build_unet_backend(tiny_models.unet, spec, cache_dir=tmp_path)
    rec = trt.recorder
    first = unet(*inputs())
    address = first.data_ptr()
    setup = rec.count("set_input_shape"), rec.count("set_tensor_address")
    second = unet(*inputs())
    assert second.data_ptr() == address  # the same output buffer, reused
    assert (rec.count("set_input_shape"), rec.count("set_tensor_address")) == setup  # no new shapes, no new buffers
    assert rec.count("execute_async_v3") == 2

    x, t, e = inputs(rows=1, side=12)  # guidance off (fewer rows) at another size: new shapes, new buffers
    eps = unet(x, t, e)
    assert eps.shape == (1, 4, 12, 12)
    torch.testing.assert_close(eps, 2 * x + t.reshape(-1, 1, 1, 1).float())
    assert rec.count("set_input_shape") == setup[0] + 3 and rec.count("set_tensor_address") == setup[1] + 4
    unet(x, t, e)
    assert rec.count("set_input_shape") == setup[0] + 3  # reused again at the new shape


def test_the_engine_file_is_named_by_the_key_and_loaded_not_rebuilt(trt, spec, tiny_models, tmp_path):
    trt_backend.build_unet_backend(tiny_models.unet, spec, cache_dir=tmp_path)
    path = engine_path(spec, tmp_path)
    assert path.name == f"unet-{spec.compute_hash()}.engine" and path.is_file()
    assert path.with_suffix(".json").is_file()
    assert trt.builds == 1
    stamp = path.stat().st_mtime_ns

    trt_backend.build_unet_backend(tiny_models.unet, spec, cache_dir=tmp_path)
    assert trt.builds == 1 and trt.recorder.count("Builder") == 1  # loaded from the cache
    assert path.stat().st_mtime_ns == stamp

    changed = dataclasses.replace(spec, loras=(("some/lora", 0.8),))
    trt_backend.build_unet_backend(tiny_models.unet, changed, cache_dir=tmp_path)
    assert trt.builds == 2
    assert sorted(p.name for p in tmp_path.glob("*.engine")) == sorted([path.name, engine_path(changed, tmp_path).name])


def test_a_failed_build_raises_with_path_and_key_and_leaves_no_file(trt, spec, tiny_models, tmp_path):
    trt.fail_build = True
    with pytest.raises(DreamwireError) as error:
        trt_backend.build_unet_backend(tiny_models.unet, spec, cache_dir=tmp_path)
    message = str(error.value)
    assert str(engine_path(spec, tmp_path)) in message and spec.compute_hash() in message
    assert list(tmp_path.iterdir()) == []  # no engine, no partial file, no ONNX staging folder


def test_an_engine_that_does_not_load_is_an_error_not_a_rebuild(trt, spec, tiny_models, tmp_path):
    path = engine_path(spec, tmp_path)
    tmp_path.joinpath(path.name).write_bytes(b"not an engine")
    trt.fail_load = True
    with pytest.raises(DreamwireError, match="engines clear") as error:
        trt_backend.build_unet_backend(tiny_models.unet, spec, cache_dir=tmp_path)
    assert str(path) in str(error.value) and spec.compute_hash() in str(error.value)
    assert trt.builds == 0


def test_runtime_failures_name_the_engine_and_never_fall_back(trt, spec, tiny_models, tmp_path):
    unet = trt_backend.build_unet_backend(tiny_models.unet, spec, cache_dir=tmp_path)
    key, path = spec.compute_hash(), str(engine_path(spec, tmp_path))
    with pytest.raises(DreamwireError, match="outside its optimisation profile") as error:
        unet(*inputs(side=20))  # 160 pixels > trt_max_size 128
    assert key in str(error.value) and path in str(error.value)
    with pytest.raises(DreamwireError, match="not a multiple of 16"):
        unet(*inputs(side=9))  # the tiny UNet halves the latent once
    trt.fail_execute = True
    with pytest.raises(DreamwireError, match="execute_async_v3 failed") as error:
        unet(*inputs())
    assert key in str(error.value)


def test_missing_tensorrt_names_the_extra(monkeypatch, spec, tiny_models, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt raises ImportError
    with pytest.raises(DreamwireError, match=r"pip install 'dreamwire\[tensorrt\]'"):
        trt_backend.build_unet_backend(tiny_models.unet, spec, cache_dir=tmp_path)


def test_a_cpu_model_is_refused_with_path_and_key(monkeypatch, spec, tiny_models, tmp_path):
    module, _ = make_module()
    monkeypatch.setitem(sys.modules, "tensorrt", module)  # the real device check, not the fixture's
    with pytest.raises(DreamwireError, match="needs the model on a CUDA device") as error:
        trt_backend.build_unet_backend(tiny_models.unet, spec, cache_dir=tmp_path)
    assert spec.compute_hash() in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_a_spec_of_another_dtype_is_refused(trt, spec, tiny_models, tmp_path):
    half = dataclasses.replace(spec, dtype="float16")  # the tiny UNet here is float32
    with pytest.raises(DreamwireError, match=r"the UNet is torch\.float32, the spec float16") as error:
        trt_backend.build_unet_backend(tiny_models.unet, half, cache_dir=tmp_path)
    assert half.compute_hash() in str(error.value)
    assert trt.builds == 0


def test_an_sdxl_engine_takes_the_added_conditioning_as_inputs(trt, tiny_sdxl_models, tmp_path, monkeypatch):
    """The tiny SDXL: text_embeds [B, 32] and time_ids [B, 6] in the profile, bound at fixed addresses, and copied in
    on every call; a pipeline on the engine hands them over."""
    from conftest import make_pipeline

    monkeypatch.setenv("DREAMWIRE_CACHE_DIR", str(tmp_path))
    settings = dict(width=64, height=64, t_index_list=[16, 32], cfg_type="self", acceleration="tensorrt")
    stream = StreamConfig(**settings, trt_min_size=64, trt_opt_size=64, trt_max_size=128)
    spec = engine_spec(tiny_sdxl_models.config, stream, ROWS, torch.float32, torch.device("cpu"))
    unet = trt_backend.build_unet_backend(tiny_sdxl_models.unet, spec)
    rec = trt.recorder
    shapes = {args[0]: args[1:] for kind, method, args in rec.calls if method == "set_shape"}
    assert shapes["text_embeds"] == ((1, 32), (ROWS, 32), (ROWS, 32))
    assert shapes["time_ids"] == ((1, 6), (ROWS, 6), (ROWS, 6))
    assert shapes["encoder_hidden_states"] == ((1, 77, 64), (ROWS, 77, 64), (ROWS, 77, 64))
    x, t, _ = inputs()
    added = {"text_embeds": torch.randn(ROWS, 32), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * ROWS)}
    eps = unet(x, t, torch.randn(ROWS, 77, 64), added=added)
    torch.testing.assert_close(eps, 2 * x + t.reshape(-1, 1, 1, 1).float())
    bound = {args[0] for _, m, args in rec.calls if m == "set_tensor_address"}
    assert bound == {"sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids", "latent"}
    addresses = {name: buffer.data_ptr() for name, buffer in unet._inputs.items()}
    added["text_embeds"] += 1.0  # a new prompt: written into the same input buffers
    unet(x, t, torch.randn(ROWS, 77, 64), added=added)
    assert torch.equal(unet._inputs["text_embeds"], added["text_embeds"])
    assert torch.equal(unet._inputs["time_ids"], added["time_ids"])
    assert {name: buffer.data_ptr() for name, buffer in unet._inputs.items()} == addresses
    # a pipeline on that engine (loaded from the cache, not rebuilt) hands its added conditioning over
    pipeline = make_pipeline(tiny_sdxl_models, **settings, trt_min_size=64, trt_opt_size=64, trt_max_size=128)
    assert trt.builds == 1
    pipeline.step(torch.zeros(1, 3, 64, 64))
    engine_unet = pipeline.unet.inner  # the TensorRT backend inside the feature bank's wrapper
    for name in ("text_embeds", "time_ids"):
        assert torch.equal(engine_unet._inputs[name], pipeline.added.kwargs[name])


def test_an_engine_with_two_kinds_of_extra_inputs_is_refused_naming_both(tiny_models, tiny_sdxl_models):
    """One engine graph takes one kind of extra input for now: a combination is one line naming what was asked."""
    trt_backend.check_engine_inputs(tiny_models.unet, None, None, controlnets=True)  # one kind: fine
    trt_backend.check_engine_inputs(tiny_sdxl_models.unet, None, None)
    with pytest.raises(DreamwireError, match="not SDXL's added conditioning and ControlNets: use compile or none"):
        trt_backend.check_engine_inputs(tiny_sdxl_models.unet, None, None, controlnets=True)
