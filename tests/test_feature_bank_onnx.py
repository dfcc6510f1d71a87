"""The feature bank as engine inputs and outputs: the tiny UNet exported with its bank (engine/pipeline/
feature_bank.py, export_banked_unet) and run in onnxruntime equals torch for every CFG row layout and a second
size inside the dynamic range: the latent and this frame's keys, values and outputs the ring stores."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
import torch

from engine.pipeline.feature_bank import BankedUNetGraph, export_banked_unet, layer_shapes

ROWS, FRAMES = 2, 2  # n = 2 slots, f = 1; a ring of 2 frames
TOLERANCE = 1e-3  # as the plain UNet's graph (tests/test_onnx_export.py)


@pytest.fixture(scope="module")
def banked_graph(tiny_models, tmp_path_factory):
    path, inputs, outputs = export_banked_unet(
        tiny_models.unet, tmp_path_factory.mktemp("bank") / "unet.onnx", ROWS, FRAMES, (8, 8)
    )
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]), inputs, outputs


@pytest.mark.parametrize(("batch", "latent_size"), [(2, (8, 8)), (3, (8, 8)), (4, (12, 16)), (2, (12, 16))])
def test_banked_graph_matches_torch(banked_graph, tiny_models, batch, latent_size):
    """batch 2: none/self (r rows); 3: initialize ([uncond×f ; cond]); 4: full ([uncond ; cond])."""
    session, inputs, outputs = banked_graph
    assert [i.name for i in session.get_inputs()] == inputs
    assert [o.name for o in session.get_outputs()] == outputs
    graph = BankedUNetGraph(tiny_models.unet, ROWS)
    generator = torch.Generator().manual_seed(batch)
    h, w = latent_size
    feed = {
        "sample": torch.randn(batch, 4, h, w, generator=generator),
        "timestep": torch.randint(0, 1000, (batch,), generator=generator),
        "encoder_hidden_states": torch.randn(batch, 77, 32, generator=generator),
        "bank_valid": torch.tensor([True, False]),  # one slot filled: the other must be masked out
        "fusion_strength": torch.tensor(0.6),
        "fusion_threshold": torch.tensor(0.0),  # every token fused: the nearest-neighbour path counts
    }
    shapes = layer_shapes(tiny_models.unet, latent_size)
    for name, processor in graph.processors.items():
        tokens, width, out_width = shapes[name]
        for kind, size in (("keys", width), ("values", width), ("outputs", out_width)):
            if kind != "outputs" or processor.fusion:
                index = list(graph.processors).index(name)
                feed[f"bank_{kind}_{index}"] = torch.randn(ROWS, FRAMES * tokens, size, generator=generator)
    reference = graph(*(feed[name] for name in inputs))
    ours = session.run(None, {name: tensor.numpy() for name, tensor in feed.items()})
    assert len(ours) == len(reference) == len(outputs)
    for name, got, want in zip(outputs, ours, reference, strict=True):
        assert got.shape == tuple(want.shape), name
        assert float(np.abs(got - want.numpy()).max()) <= TOLERANCE, name
    # the bank changes the result: without it (every slot empty) the latent differs
    empty = graph(*(feed[name] if name != "bank_valid" else torch.tensor([False, False]) for name in inputs))
    assert not torch.allclose(empty[0], reference[0], atol=1e-4)
