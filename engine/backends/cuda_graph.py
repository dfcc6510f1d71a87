"""stream.cuda_graph: the whole model part of a step (encode, UNet, CFG, LCM step, decode) as one graph replay.

At batch 1 a step is hundreds of small kernels; launching them one by one from Python leaves the GPU idle
between them. A CUDA graph records them once and replays them with one launch. A graph replays fixed kernels on
fixed addresses, so:
- every buffer the step reads or writes keeps its address for the pipeline's life (live changes write into it:
  embeddings, fixed noise, schedule tables, guidance scalars);
- the input image is copied into the graph's own input buffer, and the output is the graph's output buffer,
  overwritten by the next step (read it before the next step, as every sink does);
- a change of shape or CFG strategy calls invalidate(): the next step captures again.

A capture that fails at prepare follows the no-silent-fallback rule (fallback.py: the run stops, exit 2). A
re-capture that fails mid-show (guidance crossing 1 changes the CFG strategy) is tried once more; then
stream.acceleration_fallback decides: `none` runs eager for good, with a warning; `error` makes each step raise
one DreamwireError naming the failure, at once and without capturing again, until invalidate() (a control that
changes the situation, e.g. guidance back across 1) lets the next step try again. The live engine holds the last
frame meanwhile and reports the error (engine/live/loop.py), so the show never crashes.
The warm-up runs before capture (cuDNN/cuBLAS set-up, torch.compile) change the stream's state, so the caller
passes `preserve`, which restores that state afterwards: the first replay is the next frame, as eager would be.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

import torch

from engine.backends.fallback import Fallback
from engine.core.errors import DreamwireError

log = logging.getLogger(__name__)
WARMUP_RUNS = 3  # eager runs before capture, on a side stream (as torch.cuda.graphs recommends)

Body = Callable[[torch.Tensor | None], torch.Tensor]  # the step's model part: image (or None) → output frames


class StepRunner(Protocol):
    """Runs the model part of a step; chosen once per pipeline (no per-frame branch)."""

    def __call__(self, image: torch.Tensor | None) -> torch.Tensor: ...

    def warm_up(self, image: torch.Tensor | None) -> None:
        """Compile / capture now (at prepare, off the engine thread during a rebuild), state unchanged."""
        ...

    def invalidate(self) -> None:
        """The step's buffers or strategy changed: capture again before the next replay."""
        ...


class EagerStep:
    """Runs the body directly. warm_up runs it once (so a torch.compile happens at prepare, not mid-show)."""

    def __init__(self, body: Body, preserve: Callable[[], AbstractContextManager[Any]], warm: bool) -> None:
        self.body, self.preserve, self.warm = body, preserve, warm

    def __call__(self, image: torch.Tensor | None) -> torch.Tensor:
        return self.body(image)

    def warm_up(self, image: torch.Tensor | None) -> None:
        if self.warm:
            with self.preserve():
                self.body(image)

    def invalidate(self) -> None:
        return None


class GraphCapture(Protocol):
    """What CudaGraphStep needs of a graph (torch.cuda.CUDAGraph here; tests stand in a CPU recorder)."""

    def capture(self, body: Callable[[], torch.Tensor]) -> torch.Tensor: ...

    def replay(self) -> None: ...


class CudaGraph:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.graph = torch.cuda.CUDAGraph()

    def capture(self, body: Callable[[], torch.Tensor]) -> torch.Tensor:
        # thread_local: a rebuild captures off the engine thread while the engine keeps replaying its own graph.
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            return body()

    def replay(self) -> None:
        self.graph.replay()


class CudaGraphStep:
    def __init__(
        self,
        body: Body,
        preserve: Callable[[], AbstractContextManager[Any]],
        device: torch.device,
        fallback: Fallback,
        graph_factory: Callable[[torch.device], GraphCapture] = CudaGraph,
    ) -> None:
        self.body, self.preserve, self.device, self.fallback = body, preserve, device, fallback
        self.graph_factory = graph_factory
        self.graph: GraphCapture | None = None
        self.static_input: torch.Tensor | None = None  # the graph's input frames [f, 3, H, W]
        self.static_output: torch.Tensor | None = None  # the graph's output frames [f, 3, H, W]
        self.captures = 0  # how many times the step was captured (re-captures included)
        self.eager = False  # after a failed capture with acceleration_fallback: none
        self.failed: str | None = None  # mid-show, acceleration_fallback error: why each step raises until invalidate()

    def __call__(self, image: torch.Tensor | None) -> torch.Tensor:
        if self.eager:
            return self.body(image)
        if self.graph is None:
            if self.captures:
                self._recapture(image)
            else:
                self.warm_up(image)
            if self.eager:
                return self.body(image)
        if image is not None and self.static_input is not None and image.data_ptr() != self.static_input.data_ptr():
            self.static_input.copy_(image)
        self.graph.replay()  # type: ignore[union-attr]
        return self.static_output  # type: ignore[return-value]

    def warm_up(self, image: torch.Tensor | None) -> None:
        if self.graph is not None or self.eager:
            return
        self._take_input(image)
        try:
            self._capture()
        except DreamwireError:
            raise
        except Exception as error:  # capture errors are RuntimeErrors of many kinds: all mean "capture failed"
            self.graph, self.static_output = None, None
            self.fallback.failed("stream.cuda_graph: capturing the step", error)
            self.eager = True

    def _recapture(self, image: torch.Tensor | None) -> None:
        """Mid-show: capture again, once more after a failure, then stream.acceleration_fallback decides (the
        module docstring)."""
        if self.failed is not None:
            raise DreamwireError(self.failed)
        self._take_input(image)
        try:
            self._capture()
            return
        except DreamwireError:
            raise
        except Exception as error:  # a capture error of any kind: try once more
            self.graph, self.static_output = None, None
            log.warning("re-capturing the step as a CUDA graph failed (%s); trying once more", error)
        try:
            self.warm_up(image)  # the second failure goes through the fallback rule
        except DreamwireError as error:
            self.failed = f"{error.args[0]}; the last frame is held until a control changes it (e.g. guidance back)"
            raise DreamwireError(self.failed) from error

    def _take_input(self, image: torch.Tensor | None) -> None:
        if image is not None and (self.static_input is None or self.static_input.shape != image.shape):
            self.static_input = torch.empty_like(image)  # same strides as the loader's frames: a plain copy
        if image is not None:
            self.static_input.copy_(image)  # type: ignore[union-attr]

    def _capture(self) -> None:
        cuda = self.device.type == "cuda"
        with self.preserve():
            side = torch.cuda.Stream(self.device) if cuda else None
            if side is not None:
                side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side) if side is not None else nullcontext():
                for _ in range(WARMUP_RUNS):
                    self.body(self.static_input)
            if side is not None:
                torch.cuda.current_stream(self.device).wait_stream(side)
        graph = self.graph_factory(self.device)
        with self.preserve():  # a recorder that runs the body while recording (the CPU stand-in) changes nothing
            self.static_output = graph.capture(lambda: self.body(self.static_input))
        self.graph = graph
        self.captures += 1
        log.info("captured the step as a CUDA graph (capture %d)", self.captures)

    def invalidate(self) -> None:
        self.graph, self.failed = None, None
