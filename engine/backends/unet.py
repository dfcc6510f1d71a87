"""The UNet backend protocol, `ε = unet(x, t, embeddings[, residuals][, added=])`, the ControlNet backend protocol
(the residuals of one ControlNet, scaled per row), and their eager PyTorch implementations."""

from __future__ import annotations

from typing import Protocol

import torch

# ControlNet residuals (engine/pipeline/controlnet.py): (one per down block output [B, C_k, h_k, w_k], the mid
# block's [B, C, h', w']), already scaled and summed over the nets; None without ControlNets.
Residuals = tuple[list[torch.Tensor], torch.Tensor]
# SDXL's added conditioning (engine/pipeline/sdxl.py), the UNet's added_cond_kwargs: text_embeds [B, P] (the pooled
# text embedding), time_ids [B, 6]; None for the SD 1.x/2.x UNets, which take none.
AddedCond = dict[str, torch.Tensor]
ADDED_INPUTS = ("text_embeds", "time_ids")
TIME_IDS = 6  # time_ids per row: (original size, crop top-left, target size)


def added_input_widths(unet: torch.nn.Module) -> dict[str, int]:
    """An SDXL UNet's (config addition_embed_type "text_time") added inputs and their widths: text_embeds P (the
    added embedding's input minus the time ids' sinusoidal features), time_ids 6; {} for any other UNet."""
    config = unet.config
    if getattr(config, "addition_embed_type", None) != "text_time":
        return {}
    pooled = int(config.projection_class_embeddings_input_dim) - TIME_IDS * int(config.addition_time_embed_dim)
    return dict(zip(ADDED_INPUTS, (pooled, TIME_IDS), strict=True))


class UNetBackend(Protocol):
    def __call__(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        embeddings: torch.Tensor,
        residuals: Residuals | None = None,
        added: AddedCond | None = None,
    ) -> torch.Tensor:
        """x: [B, C, h, w] latents, t: [B] int64 timesteps, embeddings: [B, L, D] → ε: [B, C, h, w]."""
        ...


class EagerUNet:
    def __init__(self, unet: torch.nn.Module) -> None:
        self.unet = unet

    def __call__(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        embeddings: torch.Tensor,
        residuals: Residuals | None = None,
        added: AddedCond | None = None,
    ) -> torch.Tensor:
        return unet_forward(self.unet, x, t, embeddings, residuals, added)


def unet_forward(
    unet: torch.nn.Module,
    x: torch.Tensor,
    t: torch.Tensor,
    embeddings: torch.Tensor,
    residuals: Residuals | None,
    added: AddedCond | None = None,
) -> torch.Tensor:
    down, mid = residuals if residuals is not None else (None, None)
    return unet(
        x,
        t,
        encoder_hidden_states=embeddings,
        added_cond_kwargs=added,
        down_block_additional_residuals=down,
        mid_block_additional_residual=mid,
        return_dict=False,
    )[0]


class ControlNetBackend(Protocol):
    def __call__(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        embeddings: torch.Tensor,
        image: torch.Tensor,
        scale: torch.Tensor,
        added: AddedCond | None = None,
    ) -> Residuals:
        """x, t, embeddings, added: the UNet call's; image: the control image [B, 3, H, W] in [0, 1]; scale: the
        conditioning scale per row [B, 1, 1, 1] → the residuals, each multiplied by its row's scale."""
        ...


class EagerControlNet:
    def __init__(self, net: torch.nn.Module) -> None:
        self.net = net

    def __call__(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        embeddings: torch.Tensor,
        image: torch.Tensor,
        scale: torch.Tensor,
        added: AddedCond | None = None,
    ) -> Residuals:
        down, mid = self.net(
            x,
            t,
            encoder_hidden_states=embeddings,
            added_cond_kwargs=added,
            controlnet_cond=image,
            conditioning_scale=1.0,
            return_dict=False,
        )
        return [block * scale for block in down], mid * scale
