"""ONNX export of the tiny model's UNet (every cfg_type's rows), TAESD and the KL VAE, run in onnxruntime and
compared with torch at two sizes inside the dynamic range."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from engine.backends.onnx_export import export_unet, export_vae, gather_external_data
from engine.config.schema import StreamConfig
from engine.core.errors import DreamwireError
from engine.pipeline.cfg import max_unet_rows

LATENT_SIZES = [(8, 8), (12, 16)]  # 64x64 and 96x128 pixels
TOLERANCE = 1e-3


def _session(path) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _max_diff(ours: np.ndarray, reference: torch.Tensor) -> float:
    return float(np.abs(ours - reference.numpy()).max())


@pytest.fixture(scope="module")
def unet_graph(tiny_models, tmp_path_factory):
    """rows → (graph path, session), each exported once."""
    graphs: dict[int, tuple] = {}

    def get(rows: int) -> tuple:
        if rows not in graphs:
            path = export_unet(tiny_models.unet, tmp_path_factory.mktemp("unet") / "unet.onnx", rows, (8, 8))
            graphs[rows] = (path, _session(path))
        return graphs[rows]

    return get


@pytest.mark.parametrize(("cfg_type", "rows"), [("none", 2), ("self", 2), ("initialize", 3), ("full", 4)])
def test_unet_graph_matches_torch_for_each_cfg_type(cfg_type, rows, unet_graph, tiny_models):
    stream = StreamConfig(width=64, height=64, t_index_list=[16, 32], cfg_type=cfg_type)
    assert max_unet_rows(stream) == rows  # n = 2, f = 1: n·f, n·f, (n+1)·f, 2·n·f
    path, session = unet_graph(rows)
    model = onnx.load(str(path))
    assert model.opset_import[0].version >= 17
    assert [i.name for i in session.get_inputs()] == ["sample", "timestep", "encoder_hidden_states"]
    assert [o.name for o in session.get_outputs()] == ["latent"]
    generator = torch.Generator().manual_seed(rows)
    for batch in (rows, 1):  # the stream's rows, and fewer (guidance off drops the uncond rows)
        for h, w in LATENT_SIZES:
            x = torch.randn(batch, 4, h, w, generator=generator)
            t = torch.randint(0, 1000, (batch,), generator=generator)
            e = torch.randn(batch, 77, 32, generator=generator)
            reference = tiny_models.unet(x, t, encoder_hidden_states=e, return_dict=False)[0]
            (ours,) = session.run(
                None, {"sample": x.numpy(), "timestep": t.numpy(), "encoder_hidden_states": e.numpy()}
            )
            assert ours.shape == (batch, 4, h, w)
            assert _max_diff(ours, reference) <= TOLERANCE


@pytest.mark.parametrize("which", ["taesd", "kl"])
def test_vae_graphs_match_torch(which, tiny_models, tiny_taesd_models, tmp_path):
    vae = tiny_taesd_models.vae if which == "taesd" else tiny_models.vae
    encoder_path, decoder_path = export_vae(vae, tmp_path, (64, 64))
    encoder, decoder = _session(encoder_path), _session(decoder_path)
    assert [o.name for o in encoder.get_outputs()] == ["latent" if which == "taesd" else "moments"]
    generator = torch.Generator().manual_seed(0)
    for h, w in LATENT_SIZES:
        image = torch.rand(1, 3, 8 * h, 8 * w, generator=generator) * 2 - 1
        encoded = vae.encode(image)
        reference = encoded.latents if which == "taesd" else encoded.latent_dist.parameters
        (ours,) = encoder.run(None, {"image": image.numpy()})
        assert ours.shape == (1, 4 if which == "taesd" else 8, h, w)
        assert _max_diff(ours, reference) <= TOLERANCE

        latent = torch.randn(1, 4, h, w, generator=generator)
        (picture,) = decoder.run(None, {"latent": latent.numpy()})
        assert picture.shape == (1, 3, 8 * h, 8 * w)
        assert _max_diff(picture, vae.decode(latent, return_dict=False)[0]) <= TOLERANCE


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_weights_spread_over_many_files_are_gathered_into_one(tmp_path):
    """What the exporter does past 2 GB (one file per tensor beside the graph), on a small graph."""
    layer = torch.nn.Linear(4, 3)
    staging = tmp_path / "staging"
    staging.mkdir()
    torch.onnx.export(layer, (torch.randn(2, 4),), str(staging / "model.onnx"), dynamo=False, input_names=["x"])
    model = onnx.load(str(staging / "model.onnx"))
    onnx.save_model(
        model, str(staging / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=0
    )
    assert len(list(staging.iterdir())) > 2

    gather_external_data(staging / "model.onnx", tmp_path / "linear.onnx")
    assert sorted(p.name for p in tmp_path.glob("linear.onnx*")) == ["linear.onnx", "linear.onnx.data"]
    x = torch.randn(2, 4)
    (ours,) = _session(tmp_path / "linear.onnx").run(None, {"x": x.numpy()})
    assert _max_diff(ours, layer(x)) <= 1e-6


def test_export_without_onnx_names_the_extra(monkeypatch, tiny_models, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(DreamwireError, match=r"pip install 'dreamwire\[tensorrt\]'"):
        export_unet(tiny_models.unet, tmp_path / "unet.onnx", 1, (8, 8))
    assert list(tmp_path.iterdir()) == []
