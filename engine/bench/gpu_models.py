"""Random-weight models with sd-turbo's architecture, for the GPU bench (throughput does not depend on the
weight values, and the GPU machine has no network): Stable Diffusion 2.1's UNet, an OpenCLIP-ViT-H-sized
CLIP text encoder (hidden 1024, 23 layers) with the offline character tokenizer of tiny.py, and TAESD
(AutoencoderTiny's default configuration). Built directly on the device, in the bench's dtype.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.pipeline.models import Models
from engine.pipeline.tiny import save_pipeline_folder, scheduler_config

# stabilityai/sd-turbo unet/config.json (the SD 2.1 base architecture).
SD_TURBO_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "attention_head_dim": (5, 10, 20, 20),
    "cross_attention_dim": 1024,
    "use_linear_projection": True,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "act_fn": "silu",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
}
# stabilityai/sd-turbo text_encoder/config.json (OpenCLIP ViT-H/14's text tower, penultimate layer kept).
SD_TURBO_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 512,
}


def build_sd_turbo(device: torch.device, dtype: torch.dtype) -> Models:
    """sd-turbo's UNet and text encoder and TAESD, random weights (seeded), on `device` in `dtype`."""
    from diffusers import AutoencoderTiny, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.pipeline.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)
        if device.type == "cuda":
            torch.cuda.manual_seed(0)
        unet = UNet2DConditionModel(**SD_TURBO_UNET)
        text = CLIPTextConfig(
            **SD_TURBO_TEXT,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        text_encoder = CLIPTextModel(text)
        vae = AutoencoderTiny()
    modules = [module.to(dtype).eval().requires_grad_(False) for module in (unet, vae, text_encoder)]
    return Models(
        unet=modules[0],
        vae=modules[1],
        text_encoder=modules[2],
        tokenizer=tokenizer,
        scheduler_config=scheduler_config(),
        device=device,
        dtype=dtype,
    )


def save_for_reference(models: Models, folder: Path) -> tuple[Path, Path]:
    """The models as a diffusers StableDiffusionPipeline folder (TAESD as its VAE) and TAESD on its own: what
    the reference loads. Returns (model folder, VAE folder)."""
    save_pipeline_folder(folder, models.unet, models.vae, models.text_encoder, models.tokenizer)
    return folder, folder / "vae"


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
