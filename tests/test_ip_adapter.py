"""IP-Adapter (engine/pipeline/ip_adapter.py) on a fresh tiny UNet: a synthetic state dict built the way diffusers'
own tests build one (create_ip_adapter_state_dict), and a tiny CLIPVisionModelWithProjection from config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.bench.styles import random_ip_adapter, write_random_ip_adapter
from engine.config.schema import FilterConfig, IpAdapterConfig, PromptConfig, StreamConfig
from engine.core.errors import DreamwireError
from engine.pipeline.ip_adapter import attach_ip_adapter, ip_adapter_fits, read_image_file
from engine.pipeline.models import Models
from engine.pipeline.stream import StreamPipeline
from engine.pipeline.tiny import build_unet
from tests.conftest import SIZE, clip, to_input


def ip_adapter_state_dict(unet: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """to_k_ip / to_v_ip for every cross-attention layer and a 4-token ImageProjection, built the way diffusers'
    tests build one (create_ip_adapter_state_dict), flattened for .safetensors (the bench's builder)."""
    return random_ip_adapter(unet, seed)


@pytest.fixture(scope="module")
def adapter_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The bench's random adapter and CLIP vision tower for the tiny UNet, and two images of our own."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("ip_adapter")
    written = write_random_ip_adapter(build_unet(), folder, seed=0)
    images, generator = {}, np.random.default_rng(0)
    pictures = {"a": np.full((48, 48, 3), (200, 30, 30), np.uint8), "b": generator.integers(0, 255, (48, 48, 3))}
    for name, picture in pictures.items():
        Image.fromarray(picture.astype(np.uint8)).save(folder / f"{name}.png")
        images[name] = str(folder / f"{name}.png")
    return {"model": str(written.model), "image_encoder": str(written.image_encoder), **images}


@pytest.fixture
def models(tiny_taesd_models: Models) -> Models:
    """The tiny model with a UNet of its own (the adapter changes the UNet's attention processors)."""
    return Models(**{**tiny_taesd_models.__dict__, "unet": build_unet(), "loaded": {}})


def _config(files: dict[str, str], **update: object) -> IpAdapterConfig:
    settings = {"model": files["model"], "image_encoder": files["image_encoder"], "image": files["a"], **update}
    return IpAdapterConfig(**settings)


def _pipeline(models: Models, ip_adapter: IpAdapterConfig | None, **stream: object) -> StreamPipeline:
    config = StreamConfig(width=SIZE, height=SIZE, t_index_list=[16, 32], **stream)
    pipeline = StreamPipeline(models, config, ip_adapter=ip_adapter)
    pipeline.prepare(PromptConfig(text="a photo", seed=1), FilterConfig())
    return pipeline


def _run(pipeline: StreamPipeline, frames: np.ndarray) -> list[torch.Tensor]:
    return [pipeline.step(to_input(frame[None])).clone() for frame in frames]


def test_scale_zero_equals_no_adapter_and_a_live_scale_moves_it(models: Models, adapter_files: dict) -> None:
    frames = clip(2)
    base = _run(_pipeline(models, None), frames)
    pipeline = _pipeline(models, _config(adapter_files, scale=0.0))
    scale = pipeline.ip_adapter.scale.value  # type: ignore[union-attr]
    tokens = pipeline.image_prompt.tokens  # type: ignore[union-attr]
    addresses = (scale.data_ptr(), tokens.data_ptr())
    at_zero = _run(pipeline, frames)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(at_zero, base, strict=True))
    assert tokens.abs().sum() > 0  # the image was embedded: the zero came from the scale
    pipeline.prepare(PromptConfig(text="a photo", seed=1), FilterConfig())
    pipeline.set_ip_adapter_scale(1.5)
    moved = _run(pipeline, frames)
    assert not torch.allclose(moved[-1], base[-1], atol=1e-2)
    assert (scale.data_ptr(), tokens.data_ptr()) == addresses and float(scale) == 1.5


def test_an_image_change_swaps_in_without_a_flash(models: Models, adapter_files: dict) -> None:
    """As a prompt change: buffers and noise kept, and once the buffer turned over the stream equals a fresh run
    with the new image (a reset at the change would differ for the whole turnover)."""
    images, change_at, slots = clip(6), 2, 2
    changed = _pipeline(models, _config(adapter_files, scale=1.5))
    fresh = _pipeline(models, _config(adapter_files, scale=1.5, image=adapter_files["b"]))
    new_tokens = changed.ip_adapter.embed(read_image_file(adapter_files["b"]))  # type: ignore[union-attr]
    a, b = [], []
    for k, frame in enumerate(images):
        if k == change_at:
            buffer = changed.x_t.clone()
            changed.set_image_tokens(new_tokens)
            assert torch.equal(changed.x_t, buffer)  # nothing reset
        a.append(changed.step(to_input(frame[None])).clone())
        b.append(fresh.step(to_input(frame[None])).clone())
    assert not torch.allclose(a[1], b[1], atol=1e-2)  # the images differ in what they do
    for k in range(change_at + slots - 1, len(images)):
        assert torch.allclose(a[k], b[k], atol=1e-4), k


def test_adapter_is_kept_for_equal_settings_and_removed_for_none(models: Models, adapter_files: dict) -> None:
    processors = {name: type(p) for name, p in models.unet.attn_processors.items()}
    adapter = attach_ip_adapter(models, _config(adapter_files, scale=0.5))
    assert attach_ip_adapter(models, _config(adapter_files, scale=0.9)) is adapter
    assert float(adapter.scale.value) == pytest.approx(0.9)  # type: ignore[union-attr]
    assert ip_adapter_fits(models, _config(adapter_files)) and not ip_adapter_fits(models, IpAdapterConfig())
    assert attach_ip_adapter(models, IpAdapterConfig()) is None
    assert {name: type(p) for name, p in models.unet.attn_processors.items()} == processors


def test_bad_settings_are_one_line_each(models: Models, adapter_files: dict, tmp_path: Path) -> None:
    with pytest.raises(DreamwireError, match="IP-Adapter file not found"):
        attach_ip_adapter(models, _config(adapter_files, model=str(tmp_path / "none.safetensors")))
    with pytest.raises(DreamwireError, match=r"ip_adapter.plus is True .* not a Plus"):
        attach_ip_adapter(models, _config(adapter_files, plus=True))
    with pytest.raises(ValueError, match="needs an image_encoder and an image"):
        IpAdapterConfig(model=adapter_files["model"])


def test_graph_stand_in_replays_equal_eager_through_scale_and_image_changes(
    models: Models, adapter_files: dict
) -> None:
    """The CUDA-graph stand-in (tests/test_lora.py's recorder): one capture; scale and image changes replay equal to
    eager, through buffers whose addresses never change."""
    from test_lora import _Recorder

    from engine.backends.cuda_graph import CudaGraphStep
    from engine.backends.fallback import Fallback

    config = _config(adapter_files, scale=0.5)
    eager, graphed = _pipeline(models, config), _pipeline(models, config)
    step = CudaGraphStep(graphed._model_step, graphed._state_kept, torch.device("cpu"), Fallback(False), _Recorder)
    graphed._run = step
    buffers = (graphed.image_prompt.tokens, graphed.ip_adapter.scale_buffer)  # type: ignore[union-attr]
    addresses = [b.data_ptr() for b in buffers]
    image_b = eager.ip_adapter.embed(read_image_file(adapter_files["b"]))  # type: ignore[union-attr]
    for k, frame in enumerate(clip(4)):
        if k == 1:
            eager.set_ip_adapter_scale(1.75)
            graphed.set_ip_adapter_scale(1.75)
        if k == 2:
            eager.set_image_tokens(image_b)
            graphed.set_image_tokens(image_b)
        image = to_input(frame[None])
        assert torch.allclose(graphed.step(image), eager.step(image).clone(), atol=1e-5), k
    assert step.captures == 1 and [b.data_ptr() for b in buffers] == addresses


def test_an_adapter_for_another_base_is_refused_naming_both(models: Models, tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    other = UNet2DConditionModel(
        block_out_channels=(64, 128),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=48,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    path = tmp_path / "other.safetensors"
    save_file(ip_adapter_state_dict(other, seed=0), str(path))
    config = IpAdapterConfig(model=str(path), image_encoder="unused", image="unused.png")
    with pytest.raises(DreamwireError, match=r"does not fit the model 'tiny'") as caught:
        attach_ip_adapter(models, config.model_copy(update={"image_encoder": _encoder_folder(tmp_path)}))
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    assert not any(hasattr(p, "to_v_ip") for p in models.unet.attn_processors.values())  # the UNet as it was


def _encoder_folder(folder: Path) -> str:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(hidden_size=32, projection_dim=32, num_hidden_layers=1, num_attention_heads=4, image_size=32)
    )
    encoder.save_pretrained(folder / "encoder")
    return str(folder / "encoder")
