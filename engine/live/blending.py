"""Prompt and seed blending: weighted linear / spherical interpolation of embeddings and noise.

Pure tensor functions with no model code. They run at cue time (off the per-frame path), so they favour
clarity and float32 accuracy over speed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

from engine.core.errors import DreamwireError

__all__ = ["blend_embeddings", "blend_noise", "check_blend_weights", "slerp"]

# |cos θ| above this counts as (anti)parallel: sin θ is too small to divide by, so we lerp instead.
_PARALLEL_COS = 0.9995
# Vectors shorter than this have no usable direction; they are lerped too.
_TINY_NORM = 1e-12


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, *, dim: int | None = -1, lerp_norm: bool = True) -> torch.Tensor:
    """Spherical interpolation from `a` (t=0) to `b` (t=1).

    dim: the axis holding each vector (e.g. -1: every token row of a [1, 77, D] embedding is a vector);
        None treats the whole flattened tensor as one vector (noise).
    lerp_norm: True slerps the unit directions and interpolates the norm linearly (embeddings: every token keeps
        a norm between its two inputs); False is Shoemake's slerp on the raw vectors, which keeps the norm of
        equal-norm inputs (Gaussian noise) instead of shrinking it as a lerp does.
    Vectors that are (nearly) parallel or antiparallel, or of ~zero norm, fall back to a plain lerp.
    Computes in float32 (float64 for float64 input) and returns a's dtype.
    """
    if a.shape != b.shape:
        raise ValueError(f"slerp needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    if not math.isfinite(t):
        raise ValueError(f"slerp t must be finite, got {t}")
    work = _work_dtype(a)
    return _slerp(a.to(work), b.to(work), t, dim, lerp_norm).to(a.dtype)


def blend_embeddings(
    embeddings: Sequence[torch.Tensor],
    weights: Sequence[float],
    method: Literal["linear", "slerp"] = "linear",
) -> torch.Tensor:
    """Blend text-encoder outputs, each [1, 77, D], by weights (normalised to sum 1) -> [1, 77, D].

    linear: the weighted sum. slerp: per token row, direction by slerp and norm linearly; more than two prompts
    blend as a running slerp (accumulated with the next, t = w_k / (w_0 + ... + w_k)).
    A single non-zero weight returns (a copy of) that embedding bit for bit.
    """
    if method not in ("linear", "slerp"):
        raise ValueError(f"blend method must be 'linear' or 'slerp', got {method!r}")
    items = _weighted_items(embeddings, weights, "embeddings")
    if len(items) == 1:
        return items[0][0].clone()
    dtype = items[0][0].dtype
    work = _work_dtype(items[0][0])
    if method == "linear":
        out = torch.zeros_like(items[0][0], dtype=work)
        for emb, w in items:
            out.add_(emb.to(work), alpha=w)
        return out.to(dtype)
    return _running_slerp(items, work, dim=-1, lerp_norm=True).to(dtype)


def blend_noise(noises: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Blend Gaussian noise tensors of one shape (e.g. [n, 4, h, w]) by weights (normalised to sum 1).

    Slerp over the whole flattened tensor (running slerp for more than two), with no norm interpolation, so the
    result keeps the norm of a Gaussian of that size (a lerp midpoint of two independent ones shrinks by ~1/√2).
    A single non-zero weight returns (a copy of) that noise bit for bit.
    """
    items = _weighted_items(noises, weights, "noises")
    if len(items) == 1:
        return items[0][0].clone()
    return _running_slerp(items, _work_dtype(items[0][0]), dim=None, lerp_norm=False).to(items[0][0].dtype)


def check_blend_weights(what: str, weights: Sequence[float]) -> list[float]:
    """The one check of blend weights, where a blend is sent and where it is computed: finite, non-negative
    numbers with a positive (finite) sum. Returns them as floats; raises a DreamwireError naming them."""
    try:
        ws = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise DreamwireError(f"{what} weights {list(weights)!r} must be numbers") from None
    total = sum(ws)
    if any(not math.isfinite(w) or w < 0.0 for w in ws) or not (math.isfinite(total) and total > 0.0):
        raise DreamwireError(f"{what} weights {ws} must be finite, non-negative and not all zero")
    return ws


def _weighted_items(
    tensors: Sequence[torch.Tensor], weights: Sequence[float], what: str
) -> list[tuple[torch.Tensor, float]]:
    """Validate, drop zero weights, and normalise the rest to sum 1."""
    ws = check_blend_weights("blend", weights)
    if len(tensors) == 0 or len(tensors) != len(ws):
        raise ValueError(f"need one weight per tensor and at least one tensor, got {len(tensors)} {what}, weights {ws}")
    total = sum(ws)
    shape = tensors[0].shape
    for x in tensors:
        if x.shape != shape:
            raise ValueError(f"all {what} must have one shape, got {tuple(shape)} and {tuple(x.shape)}")
    return [(x, w / total) for x, w in zip(tensors, ws, strict=True) if w > 0.0]


def _running_slerp(
    items: list[tuple[torch.Tensor, float]], work: torch.dtype, dim: int | None, lerp_norm: bool
) -> torch.Tensor:
    """Running slerp over positive weights: acc <- slerp(acc, x_k, w_k / (w_0 + ... + w_k)); returns `work` dtype."""
    acc = items[0][0].to(work)
    acc_w = items[0][1]
    for x, w in items[1:]:
        acc_w += w
        acc = _slerp(acc, x.to(work), w / acc_w, dim, lerp_norm)
    return acc


def _slerp(a: torch.Tensor, b: torch.Tensor, t: float, dim: int | None, lerp_norm: bool) -> torch.Tensor:
    """slerp() on tensors already in the working dtype."""
    shape = a.shape
    if dim is None:
        a, b, dim = a.reshape(-1), b.reshape(-1), -1
    na = torch.linalg.vector_norm(a, dim=dim, keepdim=True)
    nb = torch.linalg.vector_norm(b, dim=dim, keepdim=True)
    ua = a / na.clamp_min(_TINY_NORM)
    ub = b / nb.clamp_min(_TINY_NORM)
    cos = (ua * ub).sum(dim=dim, keepdim=True).clamp(-1.0, 1.0)
    theta = torch.acos(cos)
    sin = torch.sin(theta).clamp_min(_TINY_NORM)  # the rows that need the clamp take the lerp branch below
    ca = torch.sin((1.0 - t) * theta) / sin
    cb = torch.sin(t * theta) / sin
    if lerp_norm:
        out = (ca * ua + cb * ub) * torch.lerp(na, nb, t)
    else:
        out = ca * a + cb * b
    use_lerp = (cos.abs() > _PARALLEL_COS) | (na < _TINY_NORM) | (nb < _TINY_NORM)
    out = torch.where(use_lerp, torch.lerp(a, b, t), out)
    return out.reshape(shape)


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32
