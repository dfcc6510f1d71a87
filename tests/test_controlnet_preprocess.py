"""ControlNet preprocessors (engine/pipeline/preprocess.py): canny and soft_edge in torch, depth through a tiny
transformers depth model built from config (no hub here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import SIZE

from engine.config.schema import ControlNetConfig, FilterConfig, PromptConfig, StreamConfig
from engine.pipeline.models import Models
from engine.pipeline.preprocess import Canny, Depth, SoftEdge, load_depth_model
from engine.pipeline.stream import StreamPipeline

CPU = torch.device("cpu")


def square(low: float = -1.0, high: float = 1.0) -> torch.Tensor:
    """[1, 3, 64, 64] in [−1, 1]: a bright square (rows and columns 16..47) on a dark ground."""
    image = torch.full((1, 3, SIZE, SIZE), low)
    image[..., 16:48, 16:48] = high
    return image


def border(width: int) -> torch.Tensor:
    """[64, 64] bool: within `width` px of the square's outline."""
    rows = torch.arange(SIZE)
    inside = lambda lo, hi: (rows >= lo) & (rows <= hi)  # noqa: E731
    outer = inside(16 - width, 47 + width)[:, None] & inside(16 - width, 47 + width)[None, :]
    inner = inside(16 + width, 47 - width)[:, None] & inside(16 + width, 47 - width)[None, :]
    return outer & ~inner


def test_canny_finds_the_outline_and_nothing_else():
    canny = Canny(ControlNetConfig(model="x"), CPU, torch.float32)
    edges = canny(square())
    assert edges.shape == (1, 3, SIZE, SIZE) and set(edges.unique().tolist()) == {0.0, 1.0}
    found = edges[0, 0] > 0
    assert not (found & ~border(2)).any()  # nothing on the flat ground or inside the square
    for side in (found[16:48, 14:18], found[16:48, 46:50], found[14:18, 16:48], found[46:50, 16:48]):
        assert side.any(dim=1 if side.shape[0] == 32 else 0).float().mean() > 0.9  # every side, nearly whole
    assert found.sum() < 4 * 32 * 2  # thin: about one pixel wide (non-maximum suppression)


def test_canny_thresholds_are_live_in_place():
    canny = Canny(ControlNetConfig(model="x"), CPU, torch.float32)
    address = canny.high.data_ptr()
    faint = square(-0.1, 0.1)  # a contrast of about 25 grey levels
    assert canny(faint).sum() == 0  # under the default thresholds (100, 200)
    canny.set(ControlNetConfig(model="x", canny_low=10, canny_high=20))
    assert canny(faint).sum() > 0 and canny.high.data_ptr() == address
    canny.set(ControlNetConfig(model="x", canny_low=1500, canny_high=2000))
    assert canny(square()).sum() == 0


def test_soft_edge_is_zero_on_flat_ground_and_peaks_on_the_outline():
    soft = SoftEdge(ControlNetConfig(model="x", preprocessor="soft_edge"), CPU, torch.float32)
    edges = soft(square())[0, 0]
    assert float(edges.max()) == pytest.approx(1.0) and float(edges.min()) >= 0.0
    assert float(edges[30:34, 30:34].max()) == 0.0 and float(edges[0:4, 0:4].max()) == 0.0
    assert float(edges[border(1)].mean()) > 5 * float(edges[~border(6)].mean())


@pytest.fixture(scope="module")
def tiny_depth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Depth-Anything-class model with tiny sizes and random weights, saved as a local folder."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=37,
        patch_size=14,
        image_size=28,
        out_indices=[1, 2, 3, 4],
        reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=32,
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
        patch_size=14,
        initializer_range=0.3,  # the default 0.02 gives a nearly flat random depth map
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = DepthAnythingForDepthEstimation(config)
    folder = tmp_path_factory.mktemp("depth") / "tiny-depth-anything"
    model.save_pretrained(folder)
    return folder


def test_depth_runs_a_transformers_depth_model_and_normalises_each_frame(tiny_depth: Path):
    model = load_depth_model(str(tiny_depth), CPU, torch.float32)
    depth = Depth(model, CPU, torch.float32)
    images = torch.cat([square(), square(0.5, -1.0)])  # two frames
    maps = depth(images)
    assert maps.shape == (2, 3, SIZE, SIZE)
    for frame in maps:
        assert float(frame.min()) == pytest.approx(0.0, abs=1e-6) and float(frame.max()) == pytest.approx(1.0)
    assert not torch.allclose(maps[0], maps[1])  # it depends on the frame
    # The model saw the frame at a multiple of its patch size (70 px for 64 px frames), ImageNet-normalised.
    pixels = torch.nn.functional.interpolate((images[:1] + 1) / 2, size=(70, 70), mode="bilinear", align_corners=False)
    mean, std = (
        torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
    )
    raw = model(pixel_values=(pixels - mean) / std).predicted_depth[:, None]
    raw = torch.nn.functional.interpolate(raw, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    torch.testing.assert_close(maps[0, 0], ((raw - raw.min()) / (raw.max() - raw.min()))[0, 0], atol=1e-5, rtol=0)


def test_a_depth_controlnet_loads_its_depth_model_when_built(tiny_taesd_models: Models, tiny_depth: Path):
    models = Models(**{**tiny_taesd_models.__dict__, "loaded": {}})
    net = ControlNetConfig(model="random", preprocessor="depth", depth_model=str(tiny_depth))
    stream = StreamConfig(width=SIZE, height=SIZE, t_index_list=[16, 32])
    pipeline = StreamPipeline.prepared(models, stream, PromptConfig(), FilterConfig(), controlnets=[net])
    assert ("depth", str(tiny_depth)) in models.loaded
    pipeline.step(square())
    unit = pipeline.controlnets.units[0]
    assert float(unit.image[0].min()) == pytest.approx(0.0, abs=1e-6) and float(unit.image[0].max()) == pytest.approx(
        1.0
    )
