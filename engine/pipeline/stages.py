"""Processor stages: the effects that step() runs at four named points, each stage an ordered list from the
preset's `processors` section (engine/config/processors.py), one module per effect (engine/pipeline/processors/).

    image_pre    [f, 3, H, W] in [−1, 1], before encode: the input frames (returns the frames to encode)
    latent_pre   [f, C, h, w], before the UNet: the new frames' x_t[:f], in place
    latent_post  [f, C, h, w], after the LCM step: x0 of the finishing slot, in place
    image_post   [f, 3, H, W], after decode: the output frames (returns the frames that leave)

A stage is called as one object chosen when its list or an `enabled` changes: the identity when nothing is
enabled, the processor itself when one is, a Chain of them otherwise; so step() has no mode branch. After a step
every processor (enabled or not, so that switching one on finds a fresh memory) remembers the output latent and
frames in its own fixed buffers. A processor's numbers are device tensors written in place, so under
stream.cuda_graph a param change needs no re-capture; only switching a processor on or off does (the pipeline's
step runner is told).

What a processor is: engine/pipeline/processors/context.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from engine.config.processors import STAGES, ProcessorsConfig
from engine.core.errors import DreamwireError
from engine.pipeline.processors.context import Processor, StageContext
from engine.pipeline.processors.feedback import Feedback
from engine.pipeline.processors.latent_feedback import LatentFeedback

# Each type's module (engine/config/processors.py names the same types, with their params).
MAKERS: dict[str, Callable[[str, StageContext], Processor]] = {"feedback": Feedback, "latent_feedback": LatentFeedback}


class Chain:
    """A stage with several processors enabled: each in its list's order."""

    def __init__(self, processors: tuple[Processor, ...]) -> None:
        self.processors = processors

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for processor in self.processors:
            x = processor(x)
        return x


class Remember:
    """Every processor's memory of the step's output."""

    def __init__(self, processors: tuple[Processor, ...]) -> None:
        self.processors = processors

    def __call__(self, latent: torch.Tensor, image: torch.Tensor) -> None:
        for processor in self.processors:
            processor.remember(latent, image)


def _same(x: Any) -> Any:
    return x


def _nothing(*_: object) -> None:
    return None


class Stages:
    """The four stages of one pipeline; image_pre, latent_pre, latent_post, image_post and remember are the hooks
    step() calls."""

    def __init__(self, config: ProcessorsConfig, context: StageContext) -> None:
        self.processors: dict[str, list[Processor]] = {}
        self.params: dict[str, list[dict[str, Any]]] = {}  # the params in effect, per entry
        self.enabled: dict[str, list[bool]] = {}
        for stage in STAGES:
            entries = getattr(config, stage)
            self.processors[stage] = [MAKERS[entry.type](stage, context) for entry in entries]
            self.params[stage] = [dict(entry.params) for entry in entries]
            self.enabled[stage] = [entry.enabled for entry in entries]
            for processor, params in zip(self.processors[stage], self.params[stage], strict=True):
                processor.set(params)
        everyone = tuple(p for stage in STAGES for p in self.processors[stage])
        self.state = tuple(tensor for processor in everyone for tensor in processor.state)
        self.remember: Callable[[torch.Tensor, torch.Tensor], None] = Remember(everyone) if everyone else _nothing
        self._lay_out()

    def _lay_out(self) -> None:
        self.image_pre, self.latent_pre, self.latent_post, self.image_post = (self._hook(s) for s in STAGES)

    def _hook(self, stage: str) -> Callable[[Any], Any]:
        active = tuple(p for p, on in zip(self.processors[stage], self.enabled[stage], strict=True) if on)
        if not active:
            return _same
        return active[0] if len(active) == 1 else Chain(active)

    def has(self, stage: str) -> bool:
        """Whether `stage` has processors (enabled or not)."""
        return bool(self.processors[stage])

    def value(self, stage: str, index: int, name: str) -> Any:
        self._check(stage, index)
        return self.enabled[stage][index] if name == "enabled" else self.params[stage][index][name]

    def set(self, stage: str, index: int, name: str, value: Any) -> bool:
        """Live: one entry's `enabled` or param. True when the stage's hook changed (a CUDA graph re-captures)."""
        self._check(stage, index)
        if name == "enabled":
            changed = self.enabled[stage][index] != bool(value)
            self.enabled[stage][index] = bool(value)
            self._lay_out()
            return changed
        params = self.params[stage][index]
        if name not in params:
            raise DreamwireError(f"processors.{stage}.{index}: no param {name!r} (its params: {', '.join(params)})")
        params[name] = value
        self.processors[stage][index].set(params)
        return False

    def reset(self) -> None:
        for stage in STAGES:
            for processor in self.processors[stage]:
                processor.reset()

    def _check(self, stage: str, index: int) -> None:
        if stage not in self.processors or not 0 <= index < len(self.processors[stage]):
            raise DreamwireError(f"processors.{stage}.{index}: this pipeline has no such processor")
