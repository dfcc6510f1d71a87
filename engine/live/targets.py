"""What a live change moves in the pipeline, and what the embeddings and the noise are made of.

MORPHS names the pipeline values that a change can move over a duration: the prompt's embeddings (cond, uncond),
guidance, delta and the fixed noise, and each ControlNet's scale. Their names are the schema's `apply` names of the
parameters that drive them (a ControlNet's scale: its registry path, `controlnets.0.scale`), so the registry says
which parameters can transition. Each says how to read and set its value on a pipeline and how
to interpolate it.

The embeddings and the noise also depend on the control that made them: a prompt text or a prompt blend, a seed or
a seed blend. prompt_texts / combine_prompt / noise_of turn such a control into its tensor, for the engine, for a
rebuild (another model encodes it afresh) and for the tests (a fresh prepare with that state).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from engine.config.processors import numeric_params
from engine.config.schema import MAX_CONTROLNETS, MAX_LORAS
from engine.live.blending import blend_embeddings, blend_noise, slerp
from engine.live.controls import BlendPrompts, BlendSeeds, SetValue
from engine.live.transitions import Interp, Value, lerp
from engine.pipeline.stream import StreamPipeline


def _slerp_tokens(start: torch.Tensor, target: torch.Tensor, t: float) -> torch.Tensor:
    return slerp(start, target, t, dim=-1, lerp_norm=True)  # every token row: direction slerped, norm lerped


def _slerp_noise(start: torch.Tensor, target: torch.Tensor, t: float) -> torch.Tensor:
    return slerp(start, target, t, dim=None, lerp_norm=False)  # the whole noise: keeps a Gaussian's norm


@dataclass(frozen=True)
class Morph:
    """A pipeline value that changes live, at once (a cut) or over a duration."""

    get: Callable[[StreamPipeline], Value]  # the value now (a copy where the pipeline updates it in place)
    set: Callable[[StreamPipeline, Value], None]
    interp: Interp


MORPHS: dict[str, Morph] = {
    "cond": Morph(lambda p: p.cond, lambda p, v: p.set_embeddings(v, p.uncond), _slerp_tokens),
    "uncond": Morph(lambda p: p.uncond, lambda p, v: p.set_embeddings(p.cond, v), _slerp_tokens),
    "guidance": Morph(lambda p: p.guidance, lambda p, v: p.set_guidance(float(v), p.delta), lerp),
    "delta": Morph(lambda p: p.delta, lambda p, v: p.set_guidance(p.guidance, float(v)), lerp),
    "noise": Morph(lambda p: p.noise.clone(), lambda p, v: p.set_noise(v), _slerp_noise),
}


def _controlnet_scale(index: int) -> Morph:
    """ControlNet `index`'s scale (engine/pipeline/controlnet.py): written into its per-row scales in place."""
    return Morph(
        lambda p: p.controlnets.units[index].config.scale if p.controlnets is not None else 0.0,
        lambda p, v: p.set_controlnet_scale(index, float(v)),
        lerp,
    )


# A ControlNet's scale moves like guidance; named by its registry path (one transition per entry).
MORPHS.update({f"controlnets.{index}.scale": _controlnet_scale(index) for index in range(MAX_CONTROLNETS)})


def _processor_param(stage: str, index: int, name: str) -> Morph:
    """A processor's number (engine/pipeline/stages.py): written into its device tensors in place."""
    return Morph(
        lambda p: float(p.stages.value(stage, index, name)),
        lambda p, v: p.set_processor(stage, index, name, float(v)),
        lerp,
    )


def _lora_weight(index: int) -> Morph:
    """LoRA `index`'s weight (engine/pipeline/lora.py): its device scalar, written in place."""
    return Morph(
        lambda p: p.loras.configs[index].weight if p.loras is not None else 0.0,
        lambda p, v: p.set_lora_weight(index, float(v)),
        lerp,
    )


# Every processor number moves like guidance, named by its registry path (processors.image_pre.0.zoom).
MORPHS.update({f"processors.{s}.{i}.{n}": _processor_param(s, i, n) for s, i, n in numeric_params()})

# A LoRA's weight and the IP-Adapter's scale move like guidance too (engine/pipeline/live_scale.py).
MORPHS.update({f"loras.{index}.weight": _lora_weight(index) for index in range(MAX_LORAS)})
MORPHS["ip_adapter.scale"] = Morph(lambda p: p.ip_adapter_scale(), lambda p, v: p.set_ip_adapter_scale(float(v)), lerp)

PromptSource = SetValue | BlendPrompts  # prompt.text / prompt.negative, or prompt.blend
NoiseSource = SetValue | BlendSeeds  # prompt.seed, or seed.blend


def prompt_texts(source: PromptSource) -> tuple[str, ...]:
    """The texts to encode for a prompt change."""
    if isinstance(source, BlendPrompts):
        return tuple(text for text, _ in source.items)
    return (source.value,)


def combine_prompt(source: PromptSource, embeddings: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The embedding [1, L, D] a prompt change asks for, from the encodings of its texts (prompt_texts' order)."""
    if isinstance(source, BlendPrompts):
        return blend_embeddings(embeddings, [weight for _, weight in source.items], source.method)
    return embeddings[0]


def encode_prompt(source: PromptSource, encode: Callable[[str], torch.Tensor]) -> torch.Tensor:
    """combine_prompt with the texts encoded now, on this thread."""
    return combine_prompt(source, tuple(encode(text) for text in prompt_texts(source)))


def noise_of(source: NoiseSource, pipeline: StreamPipeline) -> torch.Tensor:
    """The fixed noise [n·f, C, h, w] a seed change asks for, at this pipeline's shape."""
    if isinstance(source, BlendSeeds):
        return blend_noise([pipeline.noise_for_seed(seed) for seed, _ in source.items], [w for _, w in source.items])
    return pipeline.noise_for_seed(source.value)


def set_noise_cut(source: NoiseSource, pipeline: StreamPipeline) -> None:
    """Apply a seed change at once: a seed reseeds the generator as prepare() does; a blend sets its noise."""
    if isinstance(source, BlendSeeds):
        pipeline.set_noise(noise_of(source, pipeline))
    else:
        pipeline.set_seed(source.value)
