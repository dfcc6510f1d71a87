"""Stochastic similarity filter (SSF): skip frames that barely changed, with a seeded RNG.

p_skip = max(0, (c − η)/(1 − η)) for cosine similarity c between the current input and the last
*processed* one, threshold η (p_skip = 0 when η ≥ 1). At most max_skip_frames frames are skipped in a
row; the next one is forced through. (The reference uses Python's global, unseeded RNG and counts
skips without resetting on a pass.)
"""

from __future__ import annotations

import random

import torch


def skip_probability(cosine: float, threshold: float) -> float:
    if threshold >= 1.0:
        return 0.0
    return max(0.0, (cosine - threshold) / (1.0 - threshold))


class SimilarityFilter:
    def __init__(self, threshold: float = 0.98, max_skip_frames: int = 10, seed: int = 0) -> None:
        self.threshold = threshold
        self.max_skip_frames = max_skip_frames
        self.rng = random.Random(seed)
        self.skipped_in_row = 0
        self.last_input: torch.Tensor | None = None  # [f, 3, H, W], allocated on the first frame

    def should_skip(self, image: torch.Tensor) -> bool:
        """image: the preprocessed input [f, 3, H, W]. This scalar read is the one host sync in step(),
        and only while the filter is enabled: the skip decision must reach the host to save the UNet work."""
        if self.last_input is None:
            self.last_input = image.detach().clone()
            return False
        cosine = torch.nn.functional.cosine_similarity(
            self.last_input.reshape(-1), image.reshape(-1), dim=0, eps=1e-6
        ).item()
        if self.rng.random() < skip_probability(cosine, self.threshold) and self.skipped_in_row < self.max_skip_frames:
            self.skipped_in_row += 1
            return True
        self.skipped_in_row = 0
        self.last_input.copy_(image)
        return False


class NoFilter:
    """The filter when disabled: every frame passes, with no host read."""

    def should_skip(self, image: torch.Tensor) -> bool:
        return False
