"""LoRA weights and the IP-Adapter scale through the one registry: the live engine (in place at a frame boundary,
never a rebuild; a fused weight is one), and the OSC surface over a real UDP socket, StreamDiffusionTD's
/ipadapter_scale included. Files are never named from the network."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import preset, settle
from test_ip_adapter import adapter_files  # noqa: F401  (the fixture: a synthetic adapter, encoder and images)
from test_lora import write_lora
from test_osc import NS, rig  # noqa: F401  (rig: the fixture, a real UDP socket on loopback)

from engine.config.registry import registry
from engine.config.schema import IpAdapterConfig, LoraConfig, Preset
from engine.control.routes import routes
from engine.live.loop import LiveEngine
from engine.pipeline.ip_adapter import attach_ip_adapter
from engine.pipeline.models import Models
from engine.pipeline.tiny import build_unet

pytest.importorskip("peft", reason="LoRAs need peft (pip install 'dreamwire[lora]')")


def test_every_lora_field_is_a_registry_path_with_its_osc_address() -> None:
    specs = registry()
    assert not specs["loras"].live and specs["loras"].apply == "rebuild"
    for index in range(8):
        weight = specs[f"loras.{index}.weight"]
        assert weight.live and weight.apply == "lora" and weight.item == "loras.<i>.weight"
        assert (weight.minimum, weight.maximum) == (-2.0, 2.0)
        assert routes()[f"/loras/{index}/weight"].target == weight.path
        assert not specs[f"loras.{index}.id"].live and not specs[f"loras.{index}.fuse"].live
    assert "loras.8.weight" not in specs
    assert specs["ip_adapter.scale"].live and routes()["/ipadapter_scale"].target == "ip_adapter.scale"


def test_a_live_weight_applies_in_place_and_a_fused_one_rebuilds(tiny_taesd_models: Models, tmp_path: Path) -> None:
    config = preset()
    path = write_lora(tmp_path / "style.safetensors", seed=3)
    config.loras = [LoraConfig(id=path, weight=0.5), LoraConfig(id=path, weight=0.25, fuse=True)]
    models = Models(**{**tiny_taesd_models.__dict__, "unet": build_unet(), "loaded": {}})
    engine = LiveEngine(config, models=models)
    try:
        pipeline, scale = engine.pipeline, engine.pipeline.loras.scales[0].value
        engine.set("loras.0.weight", -1.25)
        settle(engine)
        assert engine.pipeline is pipeline and not engine.rebuilding and float(scale) == -1.25
        assert engine.preset.loras[0].weight == -1.25
        engine.set("loras.0.weight", 1.0, frames=4)  # over frames, like guidance
        engine.apply_pending_controls()
        weights = []
        for _ in range(5):
            engine.now.frame_number += 1
            engine.apply_pending_controls()
            weights.append(float(scale))
        assert weights == sorted(weights) and len(set(weights)) >= 3 and weights[-1] == 1.0
        engine.set("loras.1.weight", 0.75)  # fused: baked into the UNet, so a rebuild (on freshly loaded models)
        settle(engine)
        assert engine.pipeline is not pipeline and engine.now.models is not models
        assert engine.preset.loras[1].weight == 0.75 and engine.pipeline.loras.key[1] == (path, True, 0.75)
        assert float(engine.pipeline.loras.scales[0].value) == 1.0  # the live weight in effect carried over
    finally:
        engine.close()


def test_ip_adapter_scale_over_a_real_udp_socket_and_streamdiffusiontd(rig, adapter_files, tiny_taesd_models):  # noqa: F811
    config: Preset = preset()
    config.ip_adapter = IpAdapterConfig(
        model=adapter_files["model"], image_encoder=adapter_files["image_encoder"], image=adapter_files["a"]
    )
    try:
        r = rig(config)
        pipeline = r.engine.pipeline
        scale = pipeline.ip_adapter.scale.value
        r.controller.send(f"{NS}/ip_adapter/scale", 0.4)
        r.controller.send(f"{NS}/ip_adapter/scale", 2.5)  # out of range
        r.controller.send(f"{NS}/ip_adapter/image", "ndi:other")  # a rebuild key: refused by default
        errors = r.controller.sync(r.feedback)
        assert len(errors) == 2 and "2.5 is not accepted" in errors[0] and "is a rebuild key" in errors[1]
        r.apply()
        assert float(scale) == pytest.approx(0.4) and r.engine.pipeline is pipeline
        r.controller.send("/ipadapter_scale", 0.9)  # StreamDiffusionTD's name, no namespace
        assert r.controller.sync(r.feedback) == []
        r.apply()
        assert float(scale) == pytest.approx(0.9) and r.engine.preset.ip_adapter.scale == pytest.approx(0.9)
        assert r.feedback.wait(f"{NS}/ip_adapter/scale") == [pytest.approx(0.4)]
    finally:
        attach_ip_adapter(tiny_taesd_models, IpAdapterConfig())  # the shared tiny UNet as it was


def test_file_paths_are_refused_over_the_network_even_with_rebuild_keys(rig, tmp_path: Path) -> None:  # noqa: F811
    r = rig(allow_rebuild_keys=True)
    local = tmp_path / "style.safetensors"
    local.write_bytes(b"")
    r.controller.send(f"{NS}/loras", json.dumps([{"id": str(local)}]))
    r.controller.send(f"{NS}/loras", json.dumps([{"id": "../styles/mine.safetensors"}]))
    r.controller.send(f"{NS}/ip_adapter/model", "C:\\models\\ip.bin")
    r.controller.send(f"{NS}/ip_adapter/image", "file:/tmp/face.png")
    errors: list[Any] = r.controller.sync(r.feedback)
    assert len(errors) == 4 and all("a file path is refused over the network" in e for e in errors), errors
    assert r.engine.preset.loras == [] and not r.engine.rebuilding


def test_a_source_image_is_embedded_off_the_engine_thread_and_swapped_in(adapter_files, tiny_taesd_models):  # noqa: F811
    """ip_adapter.image as a source URI (the moving test pattern as a second feed): its frames are embedded on the
    image-prompt worker, at most image_hz a second, and each new embedding lands in the pipeline's token buffer."""
    from test_controlnet_external import step_until

    from bridges.pattern import PatternSource

    config = preset()
    config.ip_adapter = IpAdapterConfig(
        model=adapter_files["model"],
        image_encoder=adapter_files["image_encoder"],
        image="pattern:?width=64&height=64&fps=30",
        image_hz=20.0,
    )
    models = Models(**{**tiny_taesd_models.__dict__, "unet": build_unet(), "loaded": {}})
    engine = LiveEngine(config, models=models)
    try:
        tokens = engine.pipeline.image_prompt.tokens
        address = tokens.data_ptr()
        assert not tokens.any()  # nothing embedded yet: the image adds nothing
        engine.start_io(source=PatternSource(64, 64, fps=0), sinks=[])
        step_until(engine, lambda: bool(tokens.any()))
        first = tokens.clone()
        step_until(engine, lambda: not torch.equal(tokens, first))  # the pattern moves: a newer embedding
        assert engine.image_prompt.embedded >= 2 and tokens.data_ptr() == address and not engine.rebuilding
    finally:
        engine.close()
