"""A pipeline rebuild in the background: what it builds, which requests it carries, and the build itself.

The engine keeps at most one Rebuild. A change that needs one while another is building starts a newer one that
carries the older's requests (the newest per path); the older build's result is dropped when it arrives. Only the
model and the stream settings come from the rebuild's target: the prompt, the filter, the embeddings and the
noise are the ones in effect when the new pipeline is installed (engine/live/loop.py), so nothing sent during
the build is lost.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from engine.config.schema import Preset
from engine.live.controls import SetValue
from engine.live.targets import PromptSource, encode_prompt
from engine.pipeline.models import Models, load_models
from engine.pipeline.stream import StreamPipeline


@dataclass
class Rebuild:
    target: Preset  # model and stream to build (its prompt and filter sections are not used)
    requests: dict[str, SetValue]  # path -> the newest request this rebuild applies
    future: Future[tuple[Models, StreamPipeline]]
    prompts: dict[str, PromptSource] = field(default_factory=dict)  # cond/uncond sources the build encoded


def build_pipeline(
    models: Models | None,
    target: Preset,
    prompts: dict[str, PromptSource],
    embeddings: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[Models, StreamPipeline]:
    """On the rebuild thread: the models (loaded when `models` is None, i.e. the model changed) and a pipeline
    prepared with the embeddings in effect (encoded afresh for another model from `prompts`)."""
    if models is None:
        models = load_models(target.model)
        uncond = models.encode_prompt(prompts["uncond"].value)
        embeddings = (encode_prompt(prompts["cond"], models.encode_prompt), uncond)
    pipeline = StreamPipeline.prepared(models, target.stream, target.prompt, target.filter, embeddings)
    return models, pipeline
