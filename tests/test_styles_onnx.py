"""The UNet with LoRAs and an IP-Adapter exported with its live numbers as graph inputs (engine/backends/
onnx_export.py export_styled_unet, the graph TensorRT would build from): run in onnxruntime and compared with torch
through several weights and scales, so the weights are inputs, not constants folded in at export."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from test_ip_adapter import ip_adapter_state_dict
from test_lora import write_lora

from engine.backends.onnx_export import export_styled_unet
from engine.config.schema import IpAdapterConfig, LoraConfig
from engine.pipeline.ip_adapter import IpAdapter
from engine.pipeline.lora import Loras
from engine.pipeline.tiny import build_unet

pytest.importorskip("peft", reason="LoRAs need peft (pip install 'dreamwire[lora]')")


def _adapter(unet: torch.nn.Module) -> IpAdapter:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    state: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in ip_adapter_state_dict(unet, seed=0).items():
        part, _, name = key.partition(".")
        state[part][name] = value
    encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(hidden_size=32, projection_dim=32, num_hidden_layers=1, num_attention_heads=4, image_size=32)
    )
    config = IpAdapterConfig(model="synthetic", image_encoder="synthetic", image="synthetic.png")
    return IpAdapter(unet, config, state, encoder, "tiny", torch.device("cpu"), torch.float32)


def test_lora_weights_and_the_ip_adapter_are_engine_inputs(tmp_path: Path) -> None:
    unet = build_unet()
    files = [write_lora(tmp_path / f"style{i}.safetensors", seed=i) for i in range(2)]
    loras = Loras(unet, [LoraConfig(id=f, weight=0.0) for f in files], "tiny", torch.device("cpu"), torch.float32)
    adapter = _adapter(unet)
    path, names = export_styled_unet(
        unet, tmp_path / "unet.onnx", 2, (8, 8), loras.scales, adapter.scale, adapter.tokens_shape[0]
    )
    assert names == ["lora_scales", "image_tokens", "ip_adapter_scale"]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["sample", "timestep", "encoder_hidden_states", *names]
    generator = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8, generator=generator), torch.tensor([999, 499])
    text, tokens = torch.randn(2, 77, 32, generator=generator), torch.randn(2, 4, 32, generator=generator)
    outputs = []
    for weights, scale in (((0.0, 0.0), 0.0), ((1.0, -0.5), 0.0), ((1.0, -0.5), 1.5), ((-2.0, 2.0), 0.7)):
        for index, weight in enumerate(weights):
            loras.set_weight(index, weight)
        adapter.set_scale(scale)
        reference = unet(x, t, encoder_hidden_states=(text, [tokens]), return_dict=False)[0]
        feeds = {
            "sample": x.numpy(),
            "timestep": t.numpy(),
            "encoder_hidden_states": text.numpy(),
            "lora_scales": np.array(weights, dtype=np.float32),
            "image_tokens": tokens.numpy(),
            "ip_adapter_scale": np.array([scale], dtype=np.float32),
        }
        (ours,) = session.run(None, feeds)
        assert np.abs(ours - reference.numpy()).max() < 1e-3, (weights, scale)
        outputs.append(ours)
    assert all(np.abs(a - b).max() > 1e-2 for a, b in itertools.pairwise(outputs))
    assert float(loras.scales[0].value) == -2.0  # the export left the live tensors where they were
