"""The built-in `tiny` model: random weights built from config, for tests and offline demos.

Shapes follow Stable Diffusion (4 latent channels, VAE factor 8, CLIP text encoder with 77 tokens),
at a size that runs on a laptop CPU. Weights are deterministic: every module is built under a fixed seed.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

TINY_MODEL_ID = "tiny"
TINY_SDXL_ID = "tiny-sdxl"  # the SDXL family's shapes: two text encoders, text_time added conditioning
TINY_VAE_ID = "tiny-taesd"
_SEED = 0
_HIDDEN = 32  # text hidden size == UNet cross_attention_dim


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins GPT-2/CLIP byte-level BPE uses for raw bytes."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def _write_vocabulary(folder: Path) -> None:
    """vocab.json + merges.txt: a character-level CLIP BPE vocabulary (no merges), which every
    transformers version's CLIPTokenizer (slow or fast) can load."""
    alphabet = _byte_alphabet()
    vocab = {tok: i for i, tok in enumerate(alphabet + [c + "</w>" for c in alphabet])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")


def build_tokenizer() -> Any:
    """A CLIP tokenizer with a character-level vocabulary, built offline."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory(prefix="dreamwire-tok-") as folder:
        _write_vocabulary(Path(folder))
        return CLIPTokenizer.from_pretrained(folder, model_max_length=77)


def build_text_encoder(tokenizer: Any, projection: bool = False, seed: int = _SEED) -> torch.nn.Module:
    """CLIPTextModel, or with projection CLIPTextModelWithProjection (SDXL's second encoder: pooled [1, 32])."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=1000,
        hidden_size=_HIDDEN,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=_HIDDEN,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


# The tiny UNets' shared layout: two levels, the second with cross-attention, on an 8x8 latent.
_UNET_LAYOUT: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "norm_num_groups": 32,
}


def build_unet() -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED + 1)
        return UNet2DConditionModel(**_UNET_LAYOUT, cross_attention_dim=_HIDDEN, attention_head_dim=8).eval()


def build_sdxl_unet() -> torch.nn.Module:
    """The SDXL UNet's layout at a tiny size: cross-attention over both encoders' tokens (32 + 32), and the
    text_time added embedding of the pooled embedding [B, 32] and 6 time ids (8 sinusoidal features each)."""
    from diffusers import UNet2DConditionModel

    time_features = 8
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED + 4)
        return UNet2DConditionModel(
            **_UNET_LAYOUT,
            cross_attention_dim=2 * _HIDDEN,
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            transformer_layers_per_block=(1, 2),
            addition_embed_type="text_time",
            addition_time_embed_dim=time_features,
            projection_class_embeddings_input_dim=6 * time_features + _HIDDEN,
        ).eval()


def build_vae() -> torch.nn.Module:
    """AutoencoderKL with four blocks: the same factor-8 latent grid as Stable Diffusion's VAE."""
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED + 2)
        return AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 8, 16, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=64,
            scaling_factor=0.18215,
        ).eval()


def build_taesd() -> torch.nn.Module:
    """AutoencoderTiny (TAESD layout) with one block per level: factor 8, 4 latent channels.

    He-initialised (a deep ReLU network with PyTorch's default init decays to a constant: a black, frozen
    picture), with the last decoder conv scaled down so that random pictures stay mostly inside [−1, 1].
    """
    from diffusers import AutoencoderTiny

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED + 3)
        vae = AutoencoderTiny(
            encoder_block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8),
            num_encoder_blocks=(1, 1, 1, 1),
            num_decoder_blocks=(1, 1, 1, 1),
            latent_channels=4,
        ).eval()
        convs = [m for m in vae.modules() if isinstance(m, torch.nn.Conv2d)]
        with torch.no_grad():
            for conv in convs:
                torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
                if conv.bias is not None:
                    conv.bias.zero_()
            last = [m for m in vae.decoder.modules() if isinstance(m, torch.nn.Conv2d)][-1]
            last.weight.mul_(0.015)
            last.bias.fill_(0.5)  # the decoder maps [0, 1] to [−1, 1]: centre random pictures on grey
    return vae


def scheduler_config() -> dict[str, Any]:
    """Stable Diffusion's training schedule (1000 steps, scaled-linear betas) as an LCMScheduler config."""
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon",
        "original_inference_steps": 50,
        "timestep_scaling": 10.0,
        "set_alpha_to_one": True,
        "steps_offset": 1,
    }


def save_tiny_pipeline(folder: str | Path) -> Path:
    """Write the tiny model as a diffusers StableDiffusionPipeline folder (loadable by any diffusers tool)."""
    tokenizer = build_tokenizer()
    return save_pipeline_folder(folder, build_unet(), build_vae(), build_text_encoder(tokenizer), tokenizer)


def save_pipeline_folder(
    folder: str | Path, unet: torch.nn.Module, vae: torch.nn.Module, text_encoder: torch.nn.Module, tokenizer: Any
) -> Path:
    """Write these parts (a tokenizer from build_tokenizer) as a StableDiffusionPipeline folder with an LCM
    scheduler, loadable by diffusers 0.24 and transformers 4.x as well as today's versions."""
    from diffusers import LCMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=LCMScheduler.from_config(scheduler_config()),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder))
    _write_vocabulary(Path(folder, "tokenizer"))  # newer transformers save tokenizer.json only
    _prefix_text_encoder_keys(Path(folder, "text_encoder", "model.safetensors"))
    return Path(folder)


def _prefix_text_encoder_keys(weights: Path) -> None:
    """transformers 5 saves CLIPTextModel keys without the `text_model.` prefix that published SD
    checkpoints (and transformers 4) use; restore it so every version loads the same weights."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(weights))
    save_file(
        {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state.items()},
        str(weights),
        metadata={"format": "pt"},
    )


def save_tiny_taesd(folder: str | Path) -> Path:
    build_taesd().save_pretrained(str(folder))
    return Path(folder)
