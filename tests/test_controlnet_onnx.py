"""ONNX graphs for ControlNet (engine/backends/onnx_export.py), run in onnxruntime against torch: the ControlNet
with its per-row conditioning scale as an input, and the UNet with the residuals as named inputs."""

from __future__ import annotations

import numpy as np
import onnxruntime
import torch

from engine.backends.onnx_export import export_controlled_unet, export_controlnet, residual_names
from engine.pipeline.controlnet import build_random_controlnet
from engine.pipeline.models import Models

TOLERANCE = 1e-3


def _session(path) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_controlnet_and_controlled_unet_graphs_match_torch(tiny_models: Models, tmp_path):
    unet, net = tiny_models.unet, build_random_controlnet(tiny_models.unet)
    rows = 2
    net_path, names = export_controlnet(net, tmp_path / "controlnet.onnx", rows, (8, 8))
    unet_path = export_controlled_unet(unet, net, tmp_path / "unet.onnx", rows, (8, 8))
    assert names == residual_names(net) and names[-1] == "mid"
    net_session, unet_session = _session(net_path), _session(unet_path)
    assert [i.name for i in net_session.get_inputs()] == [
        "sample", "timestep", "encoder_hidden_states", "controlnet_cond", "conditioning_scale"
    ]  # fmt: skip
    assert [o.name for o in net_session.get_outputs()] == names
    assert [i.name for i in unet_session.get_inputs()] == ["sample", "timestep", "encoder_hidden_states", *names]
    generator = torch.Generator().manual_seed(0)
    for h, w in ((8, 8), (12, 16)):  # two sizes inside the dynamic range
        x = torch.randn(rows, 4, h, w, generator=generator)
        t = torch.randint(0, 1000, (rows,), generator=generator)
        e = torch.randn(rows, 77, 32, generator=generator)
        cond = torch.rand(rows, 3, 8 * h, 8 * w, generator=generator)
        scale = torch.tensor([0.0, 0.7])  # per row: the slot the net does not act on gets 0
        down, mid = net(x, t, encoder_hidden_states=e, controlnet_cond=cond, return_dict=False)
        reference = [r * scale.view(-1, 1, 1, 1) for r in (*down, mid)]
        feed = {"sample": x.numpy(), "timestep": t.numpy(), "encoder_hidden_states": e.numpy()}
        ours = net_session.run(None, {**feed, "controlnet_cond": cond.numpy(), "conditioning_scale": scale.numpy()})
        assert all(float(np.abs(o - r.numpy()).max()) < TOLERANCE for o, r in zip(ours, reference, strict=True))
        assert float(np.abs(ours[-1][0]).max()) == 0.0 and float(np.abs(ours[-1][1]).max()) > 1e-3
        latent = unet_session.run(None, {**feed, **dict(zip(names, ours, strict=True))})[0]
        expected = unet(
            x,
            t,
            encoder_hidden_states=e,
            down_block_additional_residuals=reference[:-1],
            mid_block_additional_residual=reference[-1],
            return_dict=False,
        )[0]
        assert float(np.abs(latent - expected.numpy()).max()) < TOLERANCE
        plain = unet(x, t, encoder_hidden_states=e, return_dict=False)[0]
        assert float((expected - plain).abs().max()) > 1e-3  # the residual inputs are used
