"""UNet time per frame without a host sync: CUDA events are read only once they have completed.

Under stream.cuda_graph the UNet runs inside the step's graph replay, where no Python runs: there is no UNet
time of its own to report (latest_ms() stays None), and nothing is recorded while the step is being captured.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import torch

from engine.backends.unet import UNetBackend


class TimedBackend:
    """Wraps a UNet backend. Call end_frame() after each step(); latest_ms() is the UNet time of the newest
    frame whose GPU work has finished (on the CPU, of the last frame)."""

    def __init__(self, inner: UNetBackend, device: torch.device) -> None:
        self.inner = inner
        self.cuda = device.type == "cuda"
        self._frame_events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._pending: deque[list[tuple[torch.cuda.Event, torch.cuda.Event]]] = deque(maxlen=8)
        self._cpu_ms = 0.0
        self._latest_ms: float | None = None

    def __call__(self, x: torch.Tensor, t: torch.Tensor, embeddings: torch.Tensor, **added: Any) -> torch.Tensor:
        """added: the pipeline's UNet keywords (SDXL's added conditioning), passed on as they are."""
        if not self.cuda:
            start = time.perf_counter()
            out = self.inner(x, t, embeddings, **added)
            self._cpu_ms += 1000.0 * (time.perf_counter() - start)
            return out
        if torch.cuda.is_current_stream_capturing():
            return self.inner(x, t, embeddings, **added)
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        out = self.inner(x, t, embeddings, **added)
        end.record()
        self._frame_events.append((begin, end))
        return out

    def end_frame(self) -> None:
        if not self.cuda:
            if self._cpu_ms:
                self._latest_ms, self._cpu_ms = self._cpu_ms, 0.0
            return
        if self._frame_events:
            self._pending.append(self._frame_events)
            self._frame_events = []
        while self._pending and self._pending[0][-1][1].query():  # finished: reading it costs no sync
            events = self._pending.popleft()
            self._latest_ms = sum(begin.elapsed_time(end) for begin, end in events)

    def latest_ms(self) -> float | None:
        return self._latest_ms
