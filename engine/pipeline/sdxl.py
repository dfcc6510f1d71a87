"""The SDXL family (stabilityai/sdxl-turbo, ...): two text encoders and the UNet's added conditioning.

An SDXL UNet (its config's addition_embed_type is "text_time") takes, beside the token embeddings, one added
conditioning per row: text_embeds [B, P], the second text encoder's pooled projection (P = 1280 for SDXL), and
time_ids [B, 6], (original height, width, crop top, crop left, target height, width): here the stream's size, no crop.

A prompt's SDXL embedding is one tensor [1, 77 + 1, D] (D = 768 + 1280 = 2048 for SDXL): the 77 token rows
(both encoders' penultimate hidden states, concatenated along D, as diffusers' StableDiffusionXLPipeline encodes
them), then the pooled embedding as one more row, zero-padded to D. Packed so, the pooled embedding follows the
tokens through everything that handles an embedding as one tensor: the prompt encoder's cache, blends (the same
weights; a slerp per row slerps the pooled vector, since zero padding changes neither direction nor norm),
transitions and rebuilds. The pipeline splits it when the embeddings change (AddedConditioning.lay_out), never
per frame.
"""

from __future__ import annotations

from typing import Any

import torch

from engine.backends.unet import AddedCond, added_input_widths
from engine.pipeline.cfg import CfgStrategy


def is_sdxl(unet: torch.nn.Module) -> bool:
    return bool(added_input_widths(unet))


def pooled_dim(unet: torch.nn.Module) -> int:
    """P, the pooled embedding's width (text_embeds [B, P])."""
    return added_input_widths(unet)["text_embeds"]


def base_name(config: Any) -> str:
    """The base family a UNet/ControlNet config was made for, by what its layers take: for error lines."""
    if getattr(config, "addition_embed_type", None) == "text_time":
        return "SDXL"
    width = getattr(config, "cross_attention_dim", None)
    return {768: "SD 1.x", 1024: "SD 2.x"}.get(width, f"cross-attention {width}")  # type: ignore[arg-type]


@torch.no_grad()
def encode_prompt(
    text: str, tokenizers: tuple[Any, Any], encoders: tuple[torch.nn.Module, torch.nn.Module], dtype: torch.dtype
) -> torch.Tensor:
    """text → the packed SDXL embedding [1, 77 + 1, D] (module docstring). encoders: (CLIPTextModel,
    CLIPTextModelWithProjection); tokens padded to each tokenizer's model_max_length (77)."""
    hidden: list[torch.Tensor] = []
    pooled = torch.empty(0)
    for tokenizer, encoder in zip(tokenizers, encoders, strict=True):
        tokens = tokenizer(
            text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )
        out = encoder(tokens.input_ids.to(encoder.device), output_hidden_states=True)
        hidden.append(out.hidden_states[-2])  # the penultimate layer, as SDXL was trained
        pooled = out[0]  # the last encoder's: CLIPTextModelWithProjection's text_embeds [1, P]
    return pack(torch.cat(hidden, dim=-1), pooled).to(dtype)


def pack(hidden: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """hidden [1, L, D], pooled [1, P] (P ≤ D) → [1, L + 1, D]."""
    row = torch.zeros(hidden.shape[0], 1, hidden.shape[-1], dtype=hidden.dtype, device=hidden.device)
    row[:, 0, : pooled.shape[-1]] = pooled.to(hidden.dtype)
    return torch.cat([hidden, row], dim=1)


def split(embedding: torch.Tensor, pooled_width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[1, L + 1, D] → (hidden [1, L, D], pooled [1, P]): views, no copy."""
    return embedding[:, :-1], embedding[:, -1, :pooled_width]


def time_ids(height: int, width: int) -> list[int]:
    """(original size, crop top-left, target size) = ((H, W), (0, 0), (H, W)) in pixels."""
    return [height, width, 0, 0, height, width]


class AddedConditioning:
    """The added conditioning per UNet row, in buffers updated in place (fixed addresses for a CUDA graph): the
    pooled embedding replicated through the rows exactly as the token embeddings are (cond rows the cond's,
    uncond rows the uncond's, by the CFG strategy's own layout), time_ids the same on every row."""

    def __init__(self, pooled_width: int, height: int, width: int, device: torch.device, dtype: torch.dtype) -> None:
        self.pooled_width, self.device, self.dtype = pooled_width, device, dtype
        self.time_ids = torch.tensor([time_ids(height, width)], dtype=dtype, device=device)  # [1, 6]
        self.kwargs: AddedCond = {}  # the UNet's added_cond_kwargs, the same dict for the pipeline's life

    def lay_out(
        self, cfg: CfgStrategy, cond: torch.Tensor, uncond: torch.Tensor, rows: int
    ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """cond, uncond: packed [1, L + 1, D] → their token parts (hidden [1, L, D] each), with the pooled parts
        written into kwargs; the bool is True when the buffers were reallocated (a new row count: a re-capture)."""
        (hidden_cond, pooled_cond), (hidden_uncond, pooled_uncond) = (
            split(cond, self.pooled_width),
            split(uncond, self.pooled_width),
        )
        # The strategy lays out [1, L, D] tensors: the pooled vectors go through it as one-token embeddings.
        pooled = cfg.embeddings(pooled_cond.unsqueeze(1), pooled_uncond.unsqueeze(1), rows).squeeze(1)  # [R, P]
        pooled = pooled.to(self.device, self.dtype)
        current = self.kwargs.get("text_embeds")
        if current is not None and current.shape == pooled.shape:
            current.copy_(pooled)
            return hidden_cond, hidden_uncond, False
        self.kwargs["text_embeds"] = pooled
        self.kwargs["time_ids"] = self.time_ids.repeat(pooled.shape[0], 1)  # [R, 6]
        return hidden_cond, hidden_uncond, True
