"""The second sources of `external` ControlNets: one SourceWorker each (engine/live/io_threads.py, under the
supervisor), in its own latest-frame slot, frames fitted to the stream's size as the main input is.

Kept in step with the main input by taking the newest frame of each: before every step, the newest frame of
each external source (if it is newer than the one already loaded) becomes that ControlNet's control image,
repeated for the f frames of the step. When an external source stops (it fails or ends), its last control image
is held, with one warning until frames come again; a source that never delivered leaves a black control image.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from bridges.pixels import FrameConformer
from bridges.uri import open_source, source_fit
from engine.core.frames import Frame
from engine.core.instance import Instance
from engine.core.slot import LatestFrameSlot
from engine.core.supervisor import spawn
from engine.live.io_threads import SourceWorker
from engine.pipeline.image import FrameLoader
from engine.pipeline.stream import StreamPipeline

log = logging.getLogger(__name__)


@dataclass
class _External:
    index: int  # the ControlNet's index in the preset's list
    uri: str
    worker: SourceWorker
    slot: LatestFrameSlot[Frame]
    loaded: int = 0  # the slot's sequence number of the frame loaded last
    warned: bool = False  # the one warning for this stop was given


class ControlSources:
    """The external ControlNets' sources of the running pipeline (engine thread, but for the workers)."""

    def __init__(self, stream_size: Callable[[], tuple[int, int]], instance: Instance) -> None:
        self._stream_size, self._instance = stream_size, instance
        self._externals: list[_External] = []
        self._pipeline: StreamPipeline | None = None
        self._loader: FrameLoader | None = None
        self.started = False

    def start(self, pipeline: StreamPipeline) -> None:
        """Open the sources of `pipeline`'s external ControlNets (at start: a bad URI raises DreamwireError)."""
        self.started = True
        self._follow(pipeline)

    def load(self, pipeline: StreamPipeline) -> None:
        """Before a step: the newest frame of each external source into `pipeline` (its sources follow a rebuilt
        pipeline's list)."""
        if not self.started:
            return
        if pipeline is not self._pipeline:
            self._follow(pipeline)
        for external in self._externals:
            sequence, frame = external.slot.latest()
            if frame is not None and sequence != external.loaded:
                external.loaded, external.warned = sequence, False
                pipeline.set_control_frame(external.index, self._loader(frame.image[None]))  # type: ignore[misc]
            elif (external.worker.failing or external.worker.finished.is_set()) and not external.warned:
                external.warned = True
                held = "its last control image is held" if external.loaded else "the control image stays black"
                log.warning(
                    "controlnets.%d: the external source %s stopped (%s): %s",
                    external.index,
                    external.uri,
                    external.worker.state,
                    held,
                )

    def _follow(self, pipeline: StreamPipeline) -> None:
        """Sources for the external ControlNets of `pipeline`: those with the same index and URI keep running."""
        self._pipeline = pipeline
        config = pipeline.config
        self._loader = FrameLoader(1, config.height, config.width, pipeline.device, pipeline.dtype)
        wanted = []
        if pipeline.controlnets is not None:
            wanted = [
                (index, unit.config.input)
                for index, unit in enumerate(pipeline.controlnets.units)
                if unit.config.preprocessor == "external" and unit.config.input is not None
            ]
        running = {(e.index, e.uri): e for e in self._externals}
        kept = [running.pop(key) for key in wanted if key in running]
        for external in kept:
            external.loaded = 0  # a new pipeline: its control buffers start empty
        new = [self._open(index, uri) for index, uri in wanted if (index, uri) not in {(e.index, e.uri) for e in kept}]
        self._externals = sorted(kept + new, key=lambda e: e.index)
        self._stop([e.worker for e in running.values()])

    def _open(self, index: int, uri: str) -> _External:
        source = open_source(uri, self._instance)
        slot: LatestFrameSlot[Frame] = LatestFrameSlot()
        conform = FrameConformer(f"controlnets.{index} source {source.name}", self._stream_size, source_fit(uri))
        worker = SourceWorker(source, slot, conform=conform)
        worker.start()
        log.info("controlnets.%d: control images from %s", index, uri)
        return _External(index, uri, worker, slot)

    @staticmethod
    def _stop(workers: list[SourceWorker]) -> None:
        if workers:  # off the engine thread: a bridge may take up to 2 s to close
            spawn("dreamwire-control-source-stop", lambda _stop: [w.stop() for w in workers], restart=False)

    def close(self) -> None:
        for external in self._externals:
            external.worker.stop()
        self._externals = []
