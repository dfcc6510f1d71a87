"""The IP-Adapter's image from a source URI (`ip_adapter.image: ndi:REFERENCE`, a second feed as an external
ControlNet's): its frames embedded off the engine thread, at most ip_adapter.image_hz times a second, and swapped
in between two frames like a prompt (no flash).

Three threads, each under the supervisor: the source's own SourceWorker (engine/live/io_threads.py) puts frames in
a latest-frame slot; the embedding worker (lowest OS priority, one torch thread, as the prompt encoder) waits for
a frame newer than the last it embedded, no sooner than 1/image_hz after the last, runs IpAdapter.embed (CLIP
vision tower + projection: tokens [1, T, D]) and puts the tokens in a slot of its own; the engine thread, before
each step, loads the newest tokens into the pipeline's fixed-address buffer (StreamPipeline.set_image_tokens).
Until the first frame is embedded the tokens are zero: the image adds nothing (to_v_ip has no bias).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import torch

from bridges.pixels import FrameConformer
from bridges.uri import open_source, source_fit
from engine.core.frames import Frame
from engine.core.instance import Instance
from engine.core.slot import LatestFrameSlot
from engine.core.supervisor import SupervisedThread, spawn
from engine.live.io_threads import SourceWorker
from engine.live.threads import limit_torch_threads, lower_thread_priority
from engine.pipeline.ip_adapter import IpAdapter, is_source_uri, pixels_to_image
from engine.pipeline.stream import StreamPipeline

log = logging.getLogger(__name__)


class ImagePromptSource:
    """The running pipeline's IP-Adapter source, if its image is a source URI (engine thread, but for the workers)."""

    def __init__(self, stream_size: Callable[[], tuple[int, int]], instance: Instance) -> None:
        self._stream_size, self._instance = stream_size, instance
        self._uri: str | None = None
        self._source: SourceWorker | None = None
        self._embedder: SupervisedThread | None = None
        self._frames: LatestFrameSlot[Frame] = LatestFrameSlot()
        self._tokens: LatestFrameSlot[torch.Tensor] = LatestFrameSlot()
        self._adapter: IpAdapter | None = None
        self._pipeline: StreamPipeline | None = None
        self._loaded = 0  # the tokens slot's sequence number loaded last
        self.embedded = 0  # images embedded so far (status, tests)
        self.started = False

    def start(self, pipeline: StreamPipeline) -> None:
        """Open the source of `pipeline`'s IP-Adapter image (at start: a bad URI raises DreamwireError)."""
        self.started = True
        self._follow(pipeline)

    def load(self, pipeline: StreamPipeline) -> None:
        """Before a step: the newest embedded tokens into `pipeline` (the source follows a rebuilt pipeline)."""
        if not self.started:
            return
        if pipeline is not self._pipeline:
            self._follow(pipeline)
        sequence, tokens = self._tokens.latest()
        if tokens is not None and sequence != self._loaded:
            self._loaded = sequence
            pipeline.set_image_tokens(tokens)

    def _follow(self, pipeline: StreamPipeline) -> None:
        self._pipeline, self._loaded = pipeline, 0
        adapter = pipeline.ip_adapter
        image = adapter.config.image if adapter is not None else None
        uri = image if image is not None and is_source_uri(image) else None
        if uri == self._uri and adapter is self._adapter:
            if self._tokens.peek_latest() is not None:
                pipeline.set_image_tokens(self._tokens.peek_latest())  # type: ignore[arg-type]  # a new buffer
            return
        self.close()
        self._uri, self._adapter = uri, adapter
        if uri is None or adapter is None:
            return
        self._frames, self._tokens = LatestFrameSlot(), LatestFrameSlot()
        source = open_source(uri, self._instance)
        conform = FrameConformer(f"ip_adapter.image source {source.name}", self._stream_size, source_fit(uri))
        self._source = SourceWorker(source, self._frames, conform=conform)
        self._source.start()
        period = 1.0 / adapter.config.image_hz
        frames, tokens = self._frames, self._tokens
        self._embedder = spawn(
            "dreamwire-image-prompt", lambda stop: self._embed_loop(stop, adapter, frames, tokens, period)
        )
        log.info("ip_adapter: the image from %s, embedded at most %g times a second", uri, adapter.config.image_hz)

    def _embed_loop(
        self,
        stop: threading.Event,
        adapter: IpAdapter,
        frames: LatestFrameSlot[Frame],
        tokens: LatestFrameSlot[torch.Tensor],
        period: float,
    ) -> None:
        limit_torch_threads(1)
        lower_thread_priority()
        seen, last = 0, -period
        while not stop.is_set():
            newer = frames.wait_newer(seen, timeout=0.1)
            if newer is None:
                continue
            wait = last + period - time.perf_counter()
            if wait > 0 and stop.wait(wait):  # at most image_hz embeddings a second
                return
            seen, frame = frames.latest()
            last = time.perf_counter()
            tokens.put(adapter.embed(pixels_to_image(frame.image)))  # type: ignore[union-attr]
            self.embedded += 1

    def close(self) -> None:
        if self._embedder is not None:
            self._embedder.stop()
        if self._source is not None:
            self._source.stop()
        self._frames.close()
        self._embedder, self._source, self._uri, self._adapter = None, None, None, None
