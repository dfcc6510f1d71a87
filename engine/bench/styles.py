"""`dreamwire bench --only styles`: fps with LoRAs and with the IP-Adapter, as ratios to none, in one run.

Configurations: none; 1 and 3 LoRAs, unfused (live weights) and fused; the IP-Adapter. The LoRAs are random ones
for the model's own UNet (rank 16 on every attention projection, as a typical style LoRA) and the IP-Adapter a
random one with 4 image tokens, with a small random CLIP vision tower (its cost is off the engine thread), all
written to a temporary folder and loaded through the same code as real ones: no download.

A UNet carries one set of adapters at a time, so the configurations run one after another, each built afresh,
in `rounds` rounds (a slow spell of the machine touches them alike); the building is not timed.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bridges.pattern import pattern_image
from engine.config.schema import IpAdapterConfig, LoraConfig, Preset
from engine.pipeline.image import to_unit_range
from engine.pipeline.ip_adapter import attach_ip_adapter
from engine.pipeline.lora import attach_loras
from engine.pipeline.models import Models
from engine.pipeline.stream import StreamPipeline

log = logging.getLogger(__name__)
WARMUP_FRAMES = 3
LORA_RANK = 16
_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def write_random_lora(unet: torch.nn.Module, path: Path, seed: int, rank: int = LORA_RANK, std: float = 0.3) -> str:
    """A random LoRA for `unet`'s attention projections, saved as diffusers saves one
    (unet.<module>.lora.{down,up}.weight, .safetensors). peft's own init would make B = 0 (no effect)."""
    import copy

    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig as PeftLoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    scratch = copy.deepcopy(unet).float() if not getattr(unet, "peft_config", None) else None
    if scratch is None:
        raise ValueError("write_random_lora needs a UNet without adapters")
    scratch.add_adapter(PeftLoraConfig(r=rank, lora_alpha=rank, target_modules=_TARGETS, init_lora_weights=False))
    generator = torch.Generator().manual_seed(seed)
    state = get_peft_model_state_dict(scratch)
    state = {key: torch.randn(value.shape, generator=generator) * std / rank**0.5 for key, value in state.items()}
    save_file({f"unet.{k}": v.contiguous() for k, v in convert_state_dict_to_diffusers(state).items()}, str(path))
    return str(path)


def random_ip_adapter(unet: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A random IP-Adapter for `unet`, as diffusers' tests build one: to_k_ip / to_v_ip for every cross-attention
    layer (keys 1, 3, 5, …: diffusers' numbering of the attention processors, self-attention in between) and a
    4-token ImageProjection from image embeddings of the cross-attention width; flattened for .safetensors."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor
    from diffusers.models.embeddings import ImageProjection

    config, state, key_id = unet.config, {}, 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in unet.attn_processors:
            if name.endswith("attn1.processor"):
                continue
            if name.startswith("mid_block"):
                hidden = config.block_out_channels[-1]
            elif name.startswith("up_blocks"):
                hidden = list(reversed(config.block_out_channels))[int(name[len("up_blocks.")])]
            else:
                hidden = config.block_out_channels[int(name[len("down_blocks.")])]
            weights = IPAdapterAttnProcessor(hidden, config.cross_attention_dim, scale=1.0).state_dict()
            state[f"ip_adapter.{key_id}.to_k_ip.weight"] = weights["to_k_ip.0.weight"]
            state[f"ip_adapter.{key_id}.to_v_ip.weight"] = weights["to_v_ip.0.weight"]
            key_id += 2
        dim = config.cross_attention_dim
        projection = ImageProjection(cross_attention_dim=dim, image_embed_dim=dim, num_image_text_embeds=4)
    weights = projection.state_dict()
    state["image_proj.proj.weight"] = weights["image_embeds.weight"]
    state["image_proj.proj.bias"] = weights["image_embeds.bias"]
    state["image_proj.norm.weight"] = weights["norm.weight"]
    state["image_proj.norm.bias"] = weights["norm.bias"]
    return {k: v.contiguous() for k, v in state.items()}


def write_random_ip_adapter(unet: torch.nn.Module, folder: Path, seed: int = 0) -> IpAdapterConfig:
    """A random IP-Adapter, a small random CLIP vision tower (projection to the cross-attention width) and an
    image, written to `folder`: the config that loads them."""
    from PIL import Image
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    save_file(random_ip_adapter(unet, seed), str(folder / "ip-adapter.safetensors"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        encoder = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=32,
                projection_dim=int(unet.config.cross_attention_dim),
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=37,
                image_size=32,
                patch_size=8,
            )
        )
    encoder.save_pretrained(folder / "image_encoder")
    Image.fromarray(pattern_image(7, 64, 64)).save(folder / "image.png")
    return IpAdapterConfig(
        model=str(folder / "ip-adapter.safetensors"),
        image_encoder=str(folder / "image_encoder"),
        image=str(folder / "image.png"),
    )


def style_costs(models: Models, preset: Preset, frames: int, rounds: int = 3) -> dict[str, Any]:
    """{"fps": {config: fps}, "fps_ratio_to_none": {config: ratio}} for none, 1/3 LoRAs unfused/fused, IP-Adapter."""
    stream = preset.stream
    image = np.stack([pattern_image(0, stream.width, stream.height)])
    attach_loras(models, [])
    attach_ip_adapter(models, IpAdapterConfig())
    with tempfile.TemporaryDirectory(prefix="dreamwire-bench-styles-") as scratch:
        folder = Path(scratch)
        files = [write_random_lora(models.unet, folder / f"lora{i}.safetensors", seed=i) for i in range(3)]
        configs: dict[str, dict[str, Any]] = {"none": {}}
        for count in (1, 3):
            for fuse in (False, True):
                loras = [LoraConfig(id=f, weight=0.8, fuse=fuse) for f in files[:count]]
                configs[f"{count}_lora{'s' if count > 1 else ''}_{'fused' if fuse else 'unfused'}"] = {"loras": loras}
        configs["ip_adapter"] = {"ip_adapter": write_random_ip_adapter(models.unet, folder)}
        seconds = dict.fromkeys(configs, 0.0)
        per_round = max(1, frames // rounds)
        try:
            for _ in range(rounds):
                for name, styles in configs.items():
                    pipeline = StreamPipeline.prepared(models, stream, preset.prompt, preset.filter, **styles)
                    loader = pipeline.frame_loader()
                    for _ in range(WARMUP_FRAMES):
                        to_unit_range(pipeline.step(loader(image))).float().cpu()
                    start = time.perf_counter()
                    for _ in range(per_round):
                        to_unit_range(pipeline.step(loader(image))).float().cpu()  # the host copy a sink makes
                    seconds[name] += time.perf_counter() - start
        finally:  # the models as they were: no adapters
            attach_loras(models, [])
            attach_ip_adapter(models, IpAdapterConfig())
    fps = {name: rounds * per_round * stream.frame_buffer_size / seconds[name] for name in configs}
    return {
        "lora_rank": LORA_RANK,
        "fps": fps,
        "fps_ratio_to_none": {name: fps[name] / fps["none"] for name in configs},
    }


def format_styles(result: dict[str, Any]) -> str:
    fps, ratio = result["fps"], result["fps_ratio_to_none"]
    parts = ", ".join(f"{name} {fps[name]:.1f} fps ({ratio[name]:.2f}x)" for name in fps)
    return f"styles (random LoRAs of rank {result['lora_rank']}, ratio to none): {parts}"
