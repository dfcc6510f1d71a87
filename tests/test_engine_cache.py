"""The engine cache key: any field that changes an engine changes the key; identical presets share it."""

from __future__ import annotations

import dataclasses
import os
import sys
import types
from pathlib import Path

import pytest
import torch

from engine.backends.engine_cache import (
    EngineSpec,
    clear_engines,
    default_cache_dir,
    engine_path,
    engine_spec,
    list_engines,
    save_engine,
    weights_fingerprint,
    write_atomically,
)
from engine.commands.engines import engine_spec_for
from engine.config.presets import load_preset
from engine.config.schema import ModelConfig, StreamConfig
from engine.core.errors import DreamwireError

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def spec_of(
    model: dict | None = None, rows: int = 2, dtype: torch.dtype = torch.float16, device: torch.device = CPU, **stream
) -> EngineSpec:
    return engine_spec(
        ModelConfig(**{"id": "tiny", "vae": "tiny-taesd", **(model or {})}),
        StreamConfig(**{"t_index_list": [16, 32], **stream}),
        rows,
        dtype,
        device,
    )


def _different(value: object) -> object:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value + "-other"
    if isinstance(value, tuple) and value and isinstance(value[0], int):
        return (value[0] + 1, *value[1:])
    return (("some/lora", 1.0),)  # loras


def test_every_field_changes_the_key():
    base = spec_of()
    keys = {base.compute_hash()}
    for field in dataclasses.fields(EngineSpec):
        changed = dataclasses.replace(base, **{field.name: _different(getattr(base, field.name))})
        assert changed.compute_hash() != base.compute_hash(), field.name
        keys.add(changed.compute_hash())
    assert len(keys) == len(dataclasses.fields(EngineSpec)) + 1  # each change gives its own key


def test_lora_scale_and_order_change_the_key():
    base = spec_of()
    one = dataclasses.replace(base, loras=(("a", 0.5), ("b", 1.0)))
    assert one.compute_hash() != dataclasses.replace(base, loras=(("a", 0.6), ("b", 1.0))).compute_hash()
    assert one.compute_hash() != dataclasses.replace(base, loras=(("b", 1.0), ("a", 0.5))).compute_hash()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model": {"id": "other/model"}}, "model_id"),
        ({"model": {"vae": "madebyollin/taesd"}}, "vae_id"),
        ({"model": {"vae": None}}, "vae_id"),
        ({"rows": 4}, "unet_rows"),
        ({"trt_min_size": 128}, "min_size"),
        ({"trt_opt_size": 768}, "opt_size"),
        ({"trt_max_size": 1536}, "max_size"),
        ({"dtype": torch.float32}, "dtype"),
    ],
)
def test_each_setting_reaches_its_field_and_the_key(change, field):
    base, changed = spec_of(), spec_of(**change)
    assert getattr(changed, field) != getattr(base, field)
    assert changed.compute_hash() != base.compute_hash()


def test_identical_presets_share_the_key_and_a_size_inside_the_profile_keeps_it(tmp_path):
    copy = tmp_path / "copy.yaml"
    copy.write_text((Path(__file__).resolve().parents[1] / "presets" / "default.yaml").read_text())
    keys = {
        engine_spec_for(load_preset("default")).compute_hash(),
        engine_spec_for(load_preset("default")).compute_hash(),
        engine_spec_for(load_preset(str(copy))).compute_hash(),
        engine_spec_for(load_preset("default", ["stream.width=768", "stream.height=384"])).compute_hash(),
        engine_spec_for(load_preset("default", ["prompt.text=another prompt", "prompt.seed=9"])).compute_hash(),
    }
    assert len(keys) == 1
    assert engine_spec_for(load_preset("default", ["stream.cfg_type=full"])).compute_hash() not in keys


def test_the_gpu_and_tensorrt_version_are_in_the_key(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    h100 = spec_of(device=CUDA)
    assert (h100.gpu_name, h100.compute_capability) == ("NVIDIA H100 80GB HBM3", (9, 0))
    keys = {spec_of().compute_hash(), h100.compute_hash()}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
    keys.add(spec_of(device=CUDA).compute_hash())
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA GeForce RTX 4090")
    keys.add(spec_of(device=CUDA).compute_hash())
    for version in ("10.13.0", "11.4.0"):
        monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__=version))
        assert spec_of(device=CUDA).tensorrt_version == version
        keys.add(spec_of(device=CUDA).compute_hash())
    assert len(keys) == 6


def test_a_size_outside_the_profile_is_one_clear_error():
    with pytest.raises(
        DreamwireError, match=r"stream.width 1280 is outside the TensorRT resolution profile \[256, 1024\]"
    ):
        spec_of(width=1280)
    assert spec_of(width=1280, trt_max_size=1280).max_size == 1280


def test_the_profile_must_be_ordered():
    with pytest.raises(ValueError, match="trt_min_size <= trt_opt_size <= trt_max_size"):
        StreamConfig(trt_min_size=768, trt_opt_size=512)


def test_weights_fingerprint_of_a_folder_follows_its_weight_files(tmp_path):
    (tmp_path / "unet").mkdir()
    weights = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"a" * 100)
    (tmp_path / "README.md").write_text("not a weight file")
    first = weights_fingerprint(str(tmp_path))
    assert first.startswith("folder:") and weights_fingerprint(str(tmp_path)) == first
    (tmp_path / "README.md").write_text("edited")
    assert weights_fingerprint(str(tmp_path)) == first  # docs don't change an engine
    weights.write_bytes(b"b" * 101)
    assert weights_fingerprint(str(tmp_path)) != first


def test_weights_fingerprint_of_a_hub_id_is_its_cached_commit(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert weights_fingerprint("stabilityai/sd-turbo") == "id:stabilityai/sd-turbo"  # not cached
    ref = tmp_path / "models--stabilityai--sd-turbo" / "refs" / "main"
    ref.parent.mkdir(parents=True)
    ref.write_text("1681ed09e0cff58eeb41e878a49893228b78b94c\n")
    assert weights_fingerprint("stabilityai/sd-turbo") == "hub:1681ed09e0cff58eeb41e878a49893228b78b94c"
    assert weights_fingerprint("tiny") == "id:tiny"


@pytest.mark.parametrize(
    ("platform", "env", "expected"),
    [
        ("linux", {"XDG_CACHE_HOME": "/x/cache"}, "/x/cache/dreamwire/engines"),
        ("linux", {}, "~/.cache/dreamwire/engines"),
        ("darwin", {}, "~/Library/Caches/dreamwire/engines"),
        ("win32", {"LOCALAPPDATA": "/c/Users/me/AppData/Local"}, "/c/Users/me/AppData/Local/dreamwire/Cache/engines"),
        ("linux", {"DREAMWIRE_CACHE_DIR": "/fast/disk"}, "/fast/disk/engines"),
    ],
)
def test_default_cache_dir(platform, env, expected, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("XDG_CACHE_HOME", "LOCALAPPDATA", "DREAMWIRE_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert default_cache_dir() == Path(expected.replace("~", str(tmp_path)))


def test_save_list_and_clear(tmp_path):
    spec = spec_of()
    path = save_engine(spec, b"engine bytes", tmp_path)
    assert path == engine_path(spec, tmp_path) and path.read_bytes() == b"engine bytes"
    (listed,) = list_engines(tmp_path)
    assert listed.path == path and listed.size_bytes == 12
    assert listed.spec["key"] == spec.compute_hash() and listed.spec["model_id"] == "tiny"
    (tmp_path / ".unet-x.engine.abc.partial").write_bytes(b"left by a crash")
    (tmp_path / ".onnx-abc").mkdir()
    (tmp_path / ".onnx-abc" / "unet.onnx").write_bytes(b"left by a killed build")
    (tmp_path / "keep.txt").write_text("not ours")
    assert clear_engines(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_an_interrupted_write_leaves_neither_file_nor_partial(tmp_path):
    target = tmp_path / "unet-k.engine"

    def fail_halfway(file) -> None:
        file.write(b"half an engine")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, fail_halfway)
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"old")
    with pytest.raises(OSError):
        write_atomically(target, fail_halfway)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["unet-k.engine"]
