"""Model loading: the built-in tiny model, saving it as a diffusers folder, and clear errors."""

from __future__ import annotations

import pytest
import torch
from conftest import clip, make_pipeline, to_input

from engine.config.schema import ModelConfig
from engine.core.errors import DreamwireError
from engine.pipeline.models import load_models, resolve_device
from engine.pipeline.tiny import save_tiny_pipeline, save_tiny_taesd


def test_tiny_saves_as_a_diffusers_folder_and_loads_back(tmp_path, tiny_models):
    folder = save_tiny_pipeline(tmp_path / "tiny")
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "model_index.json"):
        assert (folder / part).exists()
    loaded = load_models(ModelConfig(id=str(folder), vae=None, dtype="float32", device="cpu"))
    frames = clip(3)
    ours = [make_pipeline(tiny_models).step(to_input(frames[i : i + 1])) for i in range(1)]
    theirs = [make_pipeline(loaded).step(to_input(frames[i : i + 1])) for i in range(1)]
    torch.testing.assert_close(ours[0], theirs[0], atol=0, rtol=0)


def test_vae_folder_class_comes_from_its_config(tmp_path):
    from diffusers import AutoencoderTiny

    folder = save_tiny_taesd(tmp_path / "taesd")
    models = load_models(ModelConfig(id="tiny", vae=str(folder), dtype="float32", device="cpu"))
    assert isinstance(models.vae, AutoencoderTiny)


def test_missing_model_folder(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(DreamwireError, match=r"model folder not found: '.*no-such-model'"):
        load_models(ModelConfig(id=str(missing), vae=None, device="cpu"))


def test_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(DreamwireError, match=r"is not a diffusers model folder"):
        load_models(ModelConfig(id=str(tmp_path), vae=None, device="cpu"))


def test_auto_device_on_this_machine():
    device, dtype = resolve_device("auto", "auto")
    expected = ("cuda", torch.float16) if torch.cuda.is_available() else ("cpu", torch.float32)
    assert (device.type, dtype) == expected


def test_cuda_asked_for_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the no-GPU error path cannot be exercised")
    with pytest.raises(DreamwireError, match=r"model.device 'cuda'.*no CUDA device"):
        resolve_device("cuda", "auto")


def test_uncached_hub_model_is_one_paragraph_naming_it():
    """Offline (as here and in CI) the hub is unreachable; online the repository does not exist. Either way."""
    with pytest.raises(
        DreamwireError, match=r"Could not load the model 'dreamwire-tests/no-such-model'.*--preset offline-demo"
    ):
        load_models(ModelConfig(id="dreamwire-tests/no-such-model", vae=None, device="cpu"))
