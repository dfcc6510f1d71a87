"""The live engine's bridges: the source and sink workers (engine/live/io_threads.py), swapped live, and the
frames going out.

A source or sink change stops the old bridges (up to 2 s each: a file is finished) and then starts the new
ones on a supervised thread of its own, so the engine never waits; the new slots take frames meanwhile. A sink
whose URI stays listed keeps running (a recording goes on in its file, the preview keeps its port).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import numpy as np

from bridges.base import Sink, Source
from bridges.pixels import FrameConformer
from bridges.uri import source_fit
from engine.core.frames import Frame
from engine.core.slot import LatestFrameSlot
from engine.core.supervisor import SupervisedThread, spawn
from engine.live.io_threads import SinkWorker, SourceWorker

SWAP_STOP_TIMEOUT = 5.0  # s to wait at close for old bridges to finish their files


class IoBridges:
    """Source and sink workers of one engine; `stream_size()` → (height, width) the source conforms frames to."""

    def __init__(
        self,
        stream_size: Callable[[], tuple[int, int]],
        stopping: threading.Event,
        on_input_frame: Callable[[float], None] | None = None,
        derive: Callable[[np.ndarray], dict[int, np.ndarray] | None] | None = None,
    ) -> None:
        self._stream_size = stream_size  # read by the source thread for every frame (a rebuild may change it)
        self._stopping = stopping
        self._on_input_frame = on_input_frame  # on the source's thread, per frame produced (the fps_in count)
        self._derive = derive  # on the source's thread: control images made there (engine/live/source_controls.py)
        self.input_slot: LatestFrameSlot[Frame] = LatestFrameSlot()
        self.source_worker: SourceWorker | None = None
        self.sink_workers: list[tuple[SinkWorker, LatestFrameSlot[Frame]]] = []
        self.sink_uris: list[str] = []  # the URI of each sink worker
        self.last_outputs: list[Frame] = []  # what went out last: re-sent while a rebuild runs or a source is lost
        self._swaps: list[SupervisedThread] = []  # old bridges stopping (then new ones starting), off the engine

    def swap_source(self, source: Source, uri: str) -> None:
        """Frames from `source` now (opened from `uri`: its fit brings frames to the stream's size)."""
        old = [self.source_worker] if self.source_worker is not None else []
        self.input_slot = LatestFrameSlot()
        conform = FrameConformer(f"source {source.name}", self._stream_size, source_fit(uri))
        self.source_worker = SourceWorker(
            source, self.input_slot, conform=conform, on_frame=self._on_input_frame, derive=self._derive
        )
        self._swap_workers(old, [self.source_worker])

    def swap_sinks(self, sinks: list[Sink], uris: Sequence[str]) -> None:
        """The sinks for these URIs: one already running for a URI keeps running; the others start, and those
        no longer listed stop."""
        running = dict(zip(self.sink_uris, self.sink_workers, strict=True))
        self.sink_workers, new = [], []
        for sink, uri in zip(sinks, uris, strict=True):
            kept = running.pop(uri, None)
            if kept is None:
                slot: LatestFrameSlot[Frame] = LatestFrameSlot()
                kept = (SinkWorker(sink, slot), slot)
                new.append(kept[0])
            self.sink_workers.append(kept)
        self.sink_uris = list(uris)
        self._swap_workers([worker for worker, _ in running.values()], new)

    def _swap_workers(self, old: Sequence[SourceWorker | SinkWorker], new: Sequence[SourceWorker | SinkWorker]) -> None:
        """Old before new, because a new bridge may open what an old one still holds (the same file, port)."""
        if not old:
            for worker in new:
                worker.start()
            return

        def swap(_stop: threading.Event) -> None:
            for worker in old:
                worker.stop()
            for worker in new:
                if not self._stopping.is_set():
                    worker.start()

        # Not restarted: a swap that raises half-way is logged and counted; starting it again would stop twice.
        thread = spawn("dreamwire-io-swap", swap, restart=False)
        self._swaps = [t for t in self._swaps if t.alive] + [thread]

    def publish(self, frames: list[Frame], keep: bool = True) -> None:
        """`frames` to every sink (each through its own latest-frame slot: a slow sink drops, never delays).
        keep=False: not a picture to hold (a placeholder), so `last_outputs` stays."""
        if keep:
            self.last_outputs = frames
        for _, slot in self.sink_workers:
            for frame in frames:
                slot.put(frame)

    def show_status(self, line: str) -> None:
        for worker, _ in self.sink_workers:
            worker.set_status(line)

    def source_lost(self) -> bool:
        """The source is failing: the last frame keeps going out until it is back."""
        return self.source_worker is not None and self.source_worker.failing

    def source_state(self) -> str | None:
        """status()["source"]: "ok", "ended", "waiting for NAME: reason" or "lost NAME: reason"; None before
        start_io."""
        worker = self.source_worker
        return None if worker is None else worker.state

    def source_finished(self) -> bool:
        """A file source ended."""
        return self.source_worker is not None and self.source_worker.finished.is_set()

    def close(self) -> None:
        """Old bridges first (they finish their files), then the source and the sinks."""
        for thread in self._swaps:
            thread.stop(timeout=SWAP_STOP_TIMEOUT)
        if self.source_worker is not None:
            self.source_worker.stop()
            self.source_worker = None
        for worker, _ in self.sink_workers:
            worker.stop()
        self.sink_workers, self.sink_uris = [], []
