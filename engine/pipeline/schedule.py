"""Per-slot tables of the stream batch, computed once at prepare (and again when t_index_list changes).

Notation (DESIGN.md): n = len(t_index_list), f = frame_buffer_size, T = the LCM timesteps after
set_timesteps(num_inference_steps), τ_i = T[t_index_list[i]], a_i = √ᾱ(τ_i), b_i = √(1 − ᾱ(τ_i)).
Every table has one row per latent row of the batch: slot i's value repeated f times, shape [n·f, 1, 1, 1]
(the reference repeats a and b but not c_skip / c_out, which is why it crashes for f > 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from engine.core.errors import DreamwireError

SIGMA_DATA = 0.5  # LCM boundary condition (consistency-model paper)


@dataclass(frozen=True)
class SlotTables:
    timesteps: torch.Tensor  # τ per row, [n·f] int64
    alpha: torch.Tensor  # a_i, [n·f, 1, 1, 1]
    beta: torch.Tensor  # b_i
    c_skip: torch.Tensor
    c_out: torch.Tensor
    alpha_next: torch.Tensor  # a_{i+1}; 1 for the last slot (residual CFG)
    beta_next: torch.Tensor  # b_{i+1}; 1 for the last slot


def lcm_timesteps(scheduler_config: dict[str, Any], num_inference_steps: int) -> torch.Tensor:
    """T: the LCM inference timesteps, descending (for 1000 train steps and 50 inference steps: 999 − 20k)."""
    from diffusers import LCMScheduler

    scheduler = LCMScheduler.from_config(scheduler_config)
    # set_timesteps takes at most original_inference_steps (and num_train_timesteps) steps: say so in one line.
    limit = min(scheduler.config.original_inference_steps, scheduler.config.num_train_timesteps)
    if not 1 <= num_inference_steps <= limit:
        raise DreamwireError(
            f"stream.num_inference_steps {num_inference_steps} is out of range for this model's scheduler: "
            f"use 1..{limit} (LCMScheduler original_inference_steps {scheduler.config.original_inference_steps})"
        )
    scheduler.set_timesteps(num_inference_steps)
    return scheduler.timesteps.to(torch.long)


def alphas_cumprod(scheduler_config: dict[str, Any]) -> torch.Tensor:
    """ᾱ over the training timesteps, float32 [num_train_timesteps]."""
    from diffusers import LCMScheduler

    return LCMScheduler.from_config(scheduler_config).alphas_cumprod


def build_slot_tables(
    scheduler_config: dict[str, Any],
    t_index_list: list[int],
    num_inference_steps: int,
    frame_buffer_size: int,
    consistency_boundary: bool,
    device: torch.device,
    dtype: torch.dtype,
) -> SlotTables:
    """Tables for the given slots. consistency_boundary=False gives the one-step turbo prediction
    x0 = (x − b·ε)/a, which is the LCM step with c_skip = 0 and c_out = 1."""
    timesteps = lcm_timesteps(scheduler_config, num_inference_steps)
    if len(t_index_list) == 0 or min(t_index_list) < 0 or max(t_index_list) >= len(timesteps):
        raise ValueError(f"t_index_list {t_index_list} must index 0..{len(timesteps) - 1}")
    tau = timesteps[torch.tensor(t_index_list, dtype=torch.long)]  # [n] int64
    abar = alphas_cumprod(scheduler_config)[tau]  # [n] float32
    alpha, beta = abar.sqrt(), (1 - abar).sqrt()
    if consistency_boundary:
        # Same operations and dtypes as diffusers' get_scalings_for_boundary_condition_discrete.
        scaled = tau * scheduler_config.get("timestep_scaling", 10.0)
        c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
        c_out = scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5
    else:
        c_skip, c_out = torch.zeros_like(alpha), torch.ones_like(alpha)
    one = torch.ones(1, dtype=alpha.dtype)
    alpha_next, beta_next = torch.cat([alpha[1:], one]), torch.cat([beta[1:], one])

    def per_row(values: torch.Tensor) -> torch.Tensor:
        rows = values.repeat_interleave(frame_buffer_size, dim=0)
        return rows.view(-1, 1, 1, 1).to(device=device, dtype=dtype)

    return SlotTables(
        timesteps=tau.repeat_interleave(frame_buffer_size).to(device),
        alpha=per_row(alpha),
        beta=per_row(beta),
        c_skip=per_row(c_skip),
        c_out=per_row(c_out),
        alpha_next=per_row(alpha_next),
        beta_next=per_row(beta_next),
    )


def slot_rows(tables: SlotTables, rows: slice) -> SlotTables:
    """The tables of some rows (one slot's f rows, for sequential mode): views, no copies."""
    return SlotTables(*(getattr(tables, name)[rows] for name in SlotTables.__dataclass_fields__))
