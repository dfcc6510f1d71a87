"""The `feature_bank` section: cached attention across frames (engine/pipeline/feature_bank.py), StreamV2V's
idea. Every field is live; `enabled` and `max_frames` change the bank's buffers, so they re-capture a CUDA graph
(or recompile under torch.compile) but never reload the model; under TensorRT they pick another engine (a rebuild).
"""

from __future__ import annotations

from engine.config.fields import Section, live

MAX_BANK_FRAMES = 4  # the ring's largest size: attention cost grows with (1 + max_frames) x tokens


class FeatureBankConfig(Section):
    enabled: bool = live(
        False,
        "Self-attention also attends to keys and values of earlier frames (same Stream Batch slot).",
        apply="feature_bank",
    )
    max_frames: int = live(
        2,
        f"Earlier frames kept in the bank (0-{MAX_BANK_FRAMES}; 0 is off); a change re-captures, never reloads.",
        apply="feature_bank",
        ge=0,
        le=MAX_BANK_FRAMES,
    )
    interval: int = live(4, "Frames between two bank updates (1: every frame).", apply="feature_bank", ge=1, le=10_000)
    fusion_strength: float = live(
        0.75,
        "Nearest-neighbour feature fusion: blend of each deep self-attention output with its most similar bank "
        "feature (0: off).",
        apply="feature_bank",
        ge=0.0,
        le=1.0,
    )
    fusion_threshold: float = live(
        0.98,
        "Cosine similarity a bank feature needs to be fused.",
        apply="feature_bank",
        ge=0.0,
        le=1.0,
    )
