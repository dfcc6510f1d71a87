"""The frame record that crosses thread boundaries between bridges and the engine."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(slots=True)
class Frame:
    """One video frame on the host.

    image: (H, W, 3) uint8 RGB, C-contiguous.
    index: the source's running frame number (0, 1, 2, ...).
    capture_time: time.perf_counter() seconds when the source produced it (for end-to-end latency).
    controls: control images made from it on the source's thread, by ControlNet index ((H, W, 3) uint8), or None.
    """

    image: np.ndarray
    index: int
    capture_time: float
    controls: dict[int, np.ndarray] | None = None
