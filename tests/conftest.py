"""Shared fixtures: the built-in tiny model (random weights from config, CPU, float32) and small clips."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

from bridges.pattern import pattern_image
from engine.config.schema import FilterConfig, ModelConfig, Preset, PromptConfig, StreamConfig
from engine.pipeline.models import Models, load_models
from engine.pipeline.stream import StreamPipeline

if TYPE_CHECKING:
    from engine.live.loop import LiveEngine

SIZE = 64  # pixels; latents are 8x8 with the tiny VAE's factor 8


@pytest.fixture(scope="session", autouse=True)
def _no_grad() -> None:
    torch.set_grad_enabled(False)


@pytest.fixture(scope="session")
def tiny_models() -> Models:
    """The tiny model with its AutoencoderKL (sampled latents)."""
    return load_models(ModelConfig(id="tiny", vae=None, dtype="float32", device="cpu"))


@pytest.fixture(scope="session")
def tiny_taesd_models(tiny_models: Models) -> Models:
    """The same UNet and text encoder with the tiny TAESD (deterministic latents)."""
    from engine.pipeline.tiny import build_taesd

    return Models(**{**tiny_models.__dict__, "vae": build_taesd()})


@pytest.fixture(scope="session")
def tiny_sdxl_models() -> Models:
    """The tiny SDXL (two text encoders, text_time added conditioning) with the tiny TAESD (deterministic latents)."""
    return load_models(ModelConfig(id="tiny-sdxl", vae="tiny-taesd", dtype="float32", device="cpu"))


def clip(frames: int, size: int = SIZE, static: bool = False) -> np.ndarray:
    """(frames, size, size, 3) uint8 of the moving test pattern."""
    return np.stack([pattern_image(0 if static else i, size, size) for i in range(frames)])


def to_input(frames: np.ndarray) -> torch.Tensor:
    """(f, H, W, 3) uint8 → [f, 3, H, W] in [−1, 1]."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0 * 2.0 - 1.0


def make_pipeline(
    models: Models,
    prompt: dict | None = None,
    filter_config: dict | None = None,
    **stream: object,
) -> StreamPipeline:
    settings = {"width": SIZE, "height": SIZE, "t_index_list": [16, 32], **stream}
    pipeline = StreamPipeline(models, StreamConfig(**settings))
    pipeline.prepare(PromptConfig(**{"text": "a photo", **(prompt or {})}), FilterConfig(**(filter_config or {})))
    return pipeline


class CountingUNet:
    """Wraps a pipeline's UNet backend and records the rows of every call."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.rows: list[int] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        assert x.shape[0] == t.shape[0] == embeddings.shape[0]
        self.rows.append(x.shape[0])
        return self.inner(x, t, embeddings)  # type: ignore[operator]


def count_unet(pipeline: StreamPipeline) -> CountingUNet:
    counter = CountingUNet(pipeline.unet)
    pipeline.unet = counter
    return counter


def preset(**stream: object) -> Preset:
    """A live preset on the tiny model at SIZE x SIZE (two steps, cfg self), no outputs."""
    return Preset.model_validate(
        {
            "model": {"id": "tiny", "vae": "tiny-taesd", "dtype": "float32", "device": "cpu"},
            "stream": {"width": SIZE, "height": SIZE, "t_index_list": [16, 32], "cfg_type": "self", **stream},
            "prompt": {"text": "a red fox", "negative": "blurry", "guidance": 1.5, "seed": 3},
            "io": {"input": f"pattern:?width={SIZE}&height={SIZE}&fps=0", "outputs": []},
        }
    )


def settle(engine: LiveEngine, timeout: float = 120.0) -> None:
    """Apply controls until none is queued and no rebuild runs (a rebuild finishes on its own thread)."""
    deadline = time.perf_counter() + timeout
    engine.apply_pending_controls()
    while engine.rebuilding or not engine.controls.empty():
        assert time.perf_counter() < deadline, "the engine did not settle (a rebuild or controls still pending)"
        time.sleep(0.01)
        engine.apply_pending_controls()


@pytest.fixture
def engine(tiny_models: Models) -> Iterator[Callable[..., LiveEngine]]:
    """make(**stream) -> a LiveEngine on the tiny model with TAESD (its own VAE); all closed afterwards."""
    from engine.live.loop import LiveEngine
    from engine.pipeline.tiny import build_taesd

    engines: list[LiveEngine] = []

    def make(**stream: object) -> LiveEngine:
        models = type(tiny_models)(**{**tiny_models.__dict__, "vae": build_taesd()})
        engines.append(LiveEngine(preset(**stream), models=models))
        return engines[-1]

    yield make
    for e in engines:
        e.close()


@pytest.fixture(scope="session", autouse=True)
def _ndi_on_loopback(tmp_path_factory: pytest.TempPathFactory) -> None:
    """NDI discovery over loopback (no mDNS in CI): set before any test loads the NDI runtime (cyndilib)."""
    import json
    import os

    if "NDI_CONFIG_DIR" not in os.environ:
        folder = tmp_path_factory.mktemp("ndi")
        config = {"ndi": {"networks": {"ips": "127.0.0.1", "discovery": ""}}}
        (folder / "ndi-config.v1.json").write_text(json.dumps(config))
        os.environ["NDI_CONFIG_DIR"] = str(folder)
