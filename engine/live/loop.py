"""The live engine: one thread owns the model and the device, and its loop reads

    while running: apply_pending_controls(); step()

Sources and sinks run on their own threads and meet the engine in latest-frame-wins slots, so a slow sink
never slows the engine and a stale input frame is dropped, not processed late. Other threads (OSC, the CLI)
send changes with set() / blend_prompts() / blend_seeds() / pause() / reset(): each is validated at once
(a bad value raises and the old one is kept) and applied between two frames. A prompt change only swaps
the embeddings, encoded off this thread; buffers and noise stay, so nothing flashes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import torch

from bridges.base import Sink, Source
from bridges.pixels import FrameConformer
from bridges.uri import open_sink, open_source, source_fit
from engine.config.registry import registry
from engine.config.schema import Preset
from engine.core.errors import DreamwireError
from engine.core.frames import Frame
from engine.core.instance import DEFAULT_INSTANCE, Instance
from engine.core.slot import LatestFrameSlot
from engine.live.blending import blend_embeddings, blend_noise, slerp
from engine.live.controls import (
    BlendPrompts,
    BlendSeeds,
    Control,
    Duration,
    Pause,
    RequestedValues,
    Reset,
    SetValue,
)
from engine.live.events import EngineEvent, EventHub, Listener
from engine.live.io_threads import SinkWorker, SourceWorker
from engine.live.metrics import EngineMetrics, status_line
from engine.live.prompt_encoder import EncodeFailure, EncodeResult, PromptEncoder
from engine.live.timing import TimedBackend
from engine.live.transitions import TransitionSet
from engine.pipeline.image import to_uint8
from engine.pipeline.models import Models, load_models
from engine.pipeline.stream import StreamPipeline

log = logging.getLogger(__name__)

Embedder = Callable[[tuple[torch.Tensor, ...]], torch.Tensor]  # encoded texts → one [1, L, D] embedding


class LiveEngine:
    def __init__(self, preset: Preset, models: Models | None = None, instance: Instance = DEFAULT_INSTANCE) -> None:
        self.instance = instance  # default sender names and preview port of bridges (engine/core/instance.py)
        self.preset = preset.model_copy(deep=True)  # the values in effect
        self.requested = RequestedValues(preset)  # the values asked for (validated), ahead of the engine
        self.controls: queue.SimpleQueue[Control] = queue.SimpleQueue()
        self.metrics = EngineMetrics()
        self.events = EventHub()  # applied changes and errors, for OSC feedback
        self.models = models or load_models(preset.model)
        self.encoder = PromptEncoder(self.models.encode_prompt)
        self._install(self.models, self._build(self.models, self.preset))
        self.transitions = TransitionSet()
        self._pending_prompts: dict[str, tuple[Embedder, Duration]] = {}
        # One intra-op thread (a per-thread setting) so a rebuild never competes with the engine's own team.
        self._rebuilder = ThreadPoolExecutor(1, "dreamwire-rebuild", initializer=torch.set_num_threads, initargs=(1,))
        self._rebuild: Future[tuple[Models, StreamPipeline, Preset]] | None = None
        self.paused = False
        self.frame_number = 0  # output frames produced
        self._last_outputs: list[Frame] = []
        self._stopping = threading.Event()  # set by stop() from any thread (a signal handler too)
        self.input_slot: LatestFrameSlot[Frame] = LatestFrameSlot()
        self.source_worker: SourceWorker | None = None
        self.sink_workers: list[tuple[SinkWorker, LatestFrameSlot[Frame]]] = []
        self._seen_input, self._seen_dropped = 0, 0
        self._status_sinks: list[Any] = []
        self._status_shown = 0.0

    # ---- other threads: send changes ------------------------------------------------------------------

    def set(self, path: str, value: Any, seconds: float | None = None, frames: int | None = None) -> None:
        """Change one parameter (dotted path from the registry); raises DreamwireError on a bad value."""
        duration = Duration(seconds, frames)
        checked = self.requested.validate(path, value, keep=False)
        # io: build the bridges here (building opens nothing), so a bad URI is refused to the sender.
        bridges: tuple[Source | Sink, ...] = ()
        if path == "io.input":
            bridges = (open_source(checked, self.instance),)
        elif path == "io.outputs":
            bridges = tuple(open_sink(uri, self.instance) for uri in checked)
        self.controls.put(SetValue(path, self.requested.validate(path, value), duration, bridges))

    def blend_prompts(
        self,
        items: Sequence[tuple[str, float]],
        method: Literal["linear", "slerp"] = "slerp",
        seconds: float | None = None,
        frames: int | None = None,
    ) -> None:
        _check_weights("prompt.blend", [w for _, w in items])
        if method not in ("linear", "slerp"):
            raise DreamwireError(f"prompt.blend method {method!r} is unknown (allowed: linear, slerp)")
        self.controls.put(BlendPrompts(tuple((str(t), float(w)) for t, w in items), method, Duration(seconds, frames)))

    def blend_seeds(
        self, items: Sequence[tuple[int, float]], seconds: float | None = None, frames: int | None = None
    ) -> None:
        _check_weights("seed.blend", [w for _, w in items])
        for seed, _ in items:
            self.requested.validate("prompt.seed", seed, keep=False)
        self.controls.put(BlendSeeds(tuple((int(s), float(w)) for s, w in items), Duration(seconds, frames)))

    def pause(self, paused: bool = True) -> None:
        self.controls.put(Pause(paused))

    def reset(self) -> None:
        self.controls.put(Reset())

    def stop(self) -> None:
        self._stopping.set()

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(EngineEvent)` on the engine thread for every change applied and every failure."""
        self.events.add(listener)

    def status(self) -> dict[str, Any]:
        """The live numbers (see engine/metrics.py) plus the engine's state, for the OSC bridge and the CLI."""
        return {**self.metrics.snapshot(), "paused": self.paused, "rebuilding": self._rebuild is not None}

    # ---- the engine thread ------------------------------------------------------------------------------

    def run(self, duration: float | None = None) -> None:
        """Run until stop(), the duration (seconds) or the end of a file source; sinks are flushed on the way out."""
        self.start_io()
        deadline = None if duration is None else time.perf_counter() + duration
        log.info("running: %s → %s", self.preset.io.input, ", ".join(self.preset.io.outputs) or "(no output)")
        try:
            while not self._stopping.is_set() and (deadline is None or time.perf_counter() < deadline):
                self.apply_pending_controls()
                if not self.step() and self.source_worker is not None and self.source_worker.finished.is_set():
                    break  # a file source ended and every frame is processed
        finally:
            self.close()

    def apply_pending_controls(self) -> None:
        while True:
            try:
                control = self.controls.get_nowait()
            except queue.Empty:
                break
            try:
                self._apply(control)
            except DreamwireError as error:  # checked when sent; whatever still fails is one line, not a crash
                log.error("%s", error)
                self.events.emit(EngineEvent("error", _control_path(control), message=str(error)))
        for result in self.encoder.poll():
            self._on_encoded(result)
        if self._rebuild is not None and self._rebuild.done():
            self._finish_rebuild()
        for name, value in self.transitions.advance(time.perf_counter(), self.frame_number).items():
            self._transition_setters[name](value)

    def step(self) -> bool:
        """Process the newest input (held during a rebuild; nothing while paused). False when no input came."""
        frames = self._take_input()
        if frames is None:
            if self.source_worker is not None and self.source_worker.failing:
                self._publish(self._last_outputs)  # the source is lost: keep the last frame going out until it's back
            return False
        if self._rebuild is not None:
            self._publish(self._last_outputs)  # keep sending the last frame until the new pipeline is ready
        elif not self.paused:
            self._publish(self.process(frames))
        self._show_status()
        return True

    def _show_status(self) -> None:
        """At most twice a second: the status line to the sinks that display text."""
        now = time.perf_counter()
        if not self._status_sinks or now - self._status_shown < 0.5:
            return
        self._status_shown = now
        line = status_line(self.metrics.snapshot())
        for sink in self._status_sinks:
            sink.set_status(line)

    def process(self, frames: list[Frame]) -> list[Frame]:
        """One pipeline step on f input frames → the f frames leaving the pipeline (n − 1 steps later)."""
        image = None if self._txt2img else self.loader(np.stack([frame.image for frame in frames]))
        output = self.pipeline.step(image)
        skipped = self.pipeline.skipped
        host = to_uint8(output)  # (f, H, W, 3): the one host sync of a frame
        now = time.perf_counter()
        if not skipped:
            self._captures.append([frame.capture_time for frame in frames])
        # The frames leaving now entered n − 1 steps ago (during warm-up: the current ones).
        captures = self._captures[0] if len(self._captures) == self._captures.maxlen else self._captures[-1]
        self.unet_timer.end_frame()
        outputs = []
        for i in range(host.shape[0]):
            outputs.append(Frame(host[i], self.frame_number, captures[i]))
            self.metrics.on_output_frame(captures[i], now, self.unet_timer.latest_ms(), skipped)
            self.frame_number += 1
        return outputs

    # ---- inputs and outputs ------------------------------------------------------------------------------

    def start_io(self, source: Source | None = None, sinks: Sequence[Sink] | None = None) -> None:
        """Start the source and sink threads (from the preset's io URIs unless bridges are given)."""
        self._start_source(source or open_source(self.preset.io.input, self.instance))
        uris = self.preset.io.outputs
        self._start_sinks(list(sinks) if sinks is not None else [open_sink(uri, self.instance) for uri in uris])

    def _start_source(self, source: Source) -> None:
        if self.source_worker is not None:
            self.source_worker.stop()
        self.input_slot = LatestFrameSlot()
        self._seen_input, self._seen_dropped = 0, 0
        # Frames are checked and brought to the stream's size (the URI's fit) on the source's thread.
        conform = FrameConformer(f"source {source.name}", self._stream_size, source_fit(self.preset.io.input))
        self.source_worker = SourceWorker(source, self.input_slot, conform=conform)
        self.source_worker.start()

    def _stream_size(self) -> tuple[int, int]:
        """(height, width) of the stream, read by the source thread for every frame (a rebuild may change it)."""
        stream = self.preset.stream
        return stream.height, stream.width

    def _start_sinks(self, sinks: list[Sink]) -> None:
        self._stop_sinks()
        # Sinks that can show text (the preview page) get the status line.
        self._status_sinks = [sink for sink in sinks if hasattr(sink, "set_status")]
        for sink in sinks:
            slot: LatestFrameSlot[Frame] = LatestFrameSlot()
            worker = SinkWorker(sink, slot)
            worker.start()
            self.sink_workers.append((worker, slot))

    def _stop_sinks(self) -> None:
        for worker, _ in self.sink_workers:
            worker.stop()
        self.sink_workers = []

    def close(self) -> None:
        """Stop the bridges (files are flushed and closed), the encoder and the rebuild thread."""
        self._stopping.set()
        if self.source_worker is not None:
            self.source_worker.stop()
            self.source_worker = None
        self._stop_sinks()
        self.encoder.close()
        self._rebuilder.shutdown(wait=False, cancel_futures=True)
        self.metrics.close()

    def _take_input(self) -> list[Frame] | None:
        """The next f frames, newest first come; None if none arrived within 0.1 s."""
        frames: list[Frame] = []
        while len(frames) < self.pipeline.frames:
            frame = self.input_slot.get(timeout=0.1)
            self._count_input()
            if frame is None:
                return None
            frames.append(frame)
        return frames

    def _count_input(self) -> None:
        if self.source_worker is None:
            return
        produced, dropped = self.source_worker.frames, self.input_slot.dropped
        for _ in range(produced - self._seen_input):
            self.metrics.on_input_frame()
        if dropped > self._seen_dropped:
            self.metrics.on_input_dropped(dropped - self._seen_dropped)
        self._seen_input, self._seen_dropped = produced, dropped

    def _publish(self, frames: list[Frame]) -> None:
        self._last_outputs = frames
        for _, slot in self.sink_workers:
            for frame in frames:
                slot.put(frame)

    # ---- applying changes -------------------------------------------------------------------------------

    def _apply(self, control: Control) -> None:
        match control:
            case SetValue(path, value, duration, bridges):
                self._apply_value(path, value, duration, bridges)
            case BlendPrompts(items, method, duration):
                weights = [w for _, w in items]
                texts = tuple(t for t, _ in items)
                self._encode("cond", texts, lambda e: blend_embeddings(e, weights, method), duration)
            case BlendSeeds(items, duration):
                noise = blend_noise([self.pipeline.noise_for_seed(s) for s, _ in items], [w for _, w in items])
                self._move("noise", self.pipeline.noise.clone(), noise, duration, _slerp_noise)
            case Pause(paused):
                self.paused = paused
                log.info("paused" if paused else "resumed")
            case Reset():
                self.transitions.clear()
                self.pipeline.prepare(self.preset.prompt, self.preset.filter)
                log.info("reset: fresh noise and empty buffers")

    def _apply_value(self, path: str, value: Any, duration: Duration, bridges: tuple[Any, ...]) -> None:
        section, name = path.split(".")
        if not registry()[path].live and section != "io":
            self._start_rebuild(path)  # self.preset takes the new values when the rebuild is done
            return
        previous = getattr(getattr(self.preset, section), name)
        setattr(getattr(self.preset, section), name, value)
        if path in ("prompt.text", "prompt.negative"):
            key = "cond" if name == "text" else "uncond"
            self._encode(key, (value,), _first, duration)
        elif path in ("prompt.guidance", "prompt.delta"):
            self._move(path, float(previous), float(value), duration, _lerp)
        elif path == "prompt.seed":
            if duration.is_cut:
                self.pipeline.set_seed(value)
            else:
                target = self.pipeline.noise_for_seed(value)
                self._move("noise", self.pipeline.noise.clone(), target, duration, _slerp_noise)
        elif path in ("stream.t_index_list", "stream.num_inference_steps"):
            if len(self.preset.stream.t_index_list) == self.pipeline.slots:
                self.pipeline.set_schedule(self.preset.stream.t_index_list, self.preset.stream.num_inference_steps)
            else:  # another number of slots: new buffer shapes
                setattr(self.preset.stream, name, previous)
                self._start_rebuild(path)
        elif section == "filter":
            self.pipeline.set_filter(self.preset.filter, seed=self.preset.prompt.seed)
        elif path == "io.input":
            self._start_source(bridges[0])
        elif path == "io.outputs":
            self._start_sinks(list(bridges))

    def _encode(self, key: str, texts: tuple[str, ...], embed: Embedder, duration: Duration) -> None:
        """Encode off this thread; the old prompt keeps rendering until the embedding is ready."""
        self._pending_prompts[key] = (embed, duration)
        self.encoder.request(key, texts)

    def _on_encoded(self, result: EncodeResult | EncodeFailure) -> None:
        pending = self._pending_prompts.pop(str(result.key), None)
        if pending is None:
            return
        if isinstance(result, EncodeFailure):
            log.error("prompt %r could not be encoded (%s); keeping the current prompt", result.text, result.message)
            return
        embed, duration = pending
        target = embed(result.embeddings).to(self.models.device)
        current = self.pipeline.cond if result.key == "cond" else self.pipeline.uncond
        self._move(str(result.key), current, target, duration, _slerp_tokens)

    def _move(self, name: str, start: Any, target: Any, duration: Duration, interp: Callable[..., Any]) -> None:
        """Apply now (a cut), or start a transition that applies a value every frame until it reaches target."""
        if duration.is_cut:
            self.transitions.cancel(name)
            self._transition_setters[name](target)
        else:
            self.transitions.start(name, start, target, seconds=duration.seconds, frames=duration.frames, interp=interp)

    # ---- rebuilds ----------------------------------------------------------------------------------------

    def _build(self, models: Models, preset: Preset) -> StreamPipeline:
        return StreamPipeline.prepared(models, preset.stream, preset.prompt, preset.filter)

    def _install(self, models: Models, pipeline: StreamPipeline) -> None:
        self.models, self.pipeline = models, pipeline
        self.unet_timer = TimedBackend(pipeline.unet, models.device)
        pipeline.unet = self.unet_timer
        stream = pipeline.config
        self.loader = pipeline.frame_loader()
        self._txt2img = stream.mode != "img2img"
        self._captures: deque[list[float]] = deque(maxlen=len(stream.t_index_list))
        # What each transition (or cut) sets on this pipeline, once per frame while it runs.
        self._transition_setters: dict[str, Callable[[Any], None]] = {
            "cond": lambda v: pipeline.set_embeddings(v, pipeline.uncond),
            "uncond": lambda v: pipeline.set_embeddings(pipeline.cond, v),
            "prompt.guidance": lambda v: pipeline.set_guidance(v, pipeline.delta),
            "prompt.delta": lambda v: pipeline.set_guidance(pipeline.guidance, v),
            "noise": pipeline.set_noise,
        }

    def _start_rebuild(self, reason: str) -> None:
        if self._rebuild is not None:
            self._rebuild.cancel()
        target = self.requested.snapshot()
        same_model = target.model == self.preset.model
        log.info("%s changed: rebuilding the pipeline (the last frame is held meanwhile)", reason)

        def build() -> tuple[Models, StreamPipeline, Preset]:
            models = self.models if same_model else load_models(target.model)
            return models, self._build(models, target), target

        self._rebuild = self._rebuilder.submit(build)

    def _finish_rebuild(self) -> None:
        future, self._rebuild = self._rebuild, None
        assert future is not None
        try:
            models, pipeline, target = future.result()
        except Exception as error:  # a failed rebuild must never end the show: one line, keep what runs
            log.error("rebuild failed, keeping the running pipeline: %s", error)
            self.requested = RequestedValues(self.preset)
            return
        if models is not self.models:
            self.encoder.close()
            self.encoder = PromptEncoder(models.encode_prompt)
        self._install(models, pipeline)
        self.preset = target
        self.transitions.clear()
        log.info(
            "rebuild done: %dx%d, cfg %s, %d steps",
            target.stream.width,
            target.stream.height,
            target.stream.cfg_type,
            len(target.stream.t_index_list),
        )


def _control_path(control: Control) -> str:
    """The registry path or command name a control is about, for error events."""
    match control:
        case SetValue(path=path):
            return path
        case BlendPrompts():
            return "prompt.blend"
        case BlendSeeds():
            return "seed.blend"
        case Pause():
            return "pause"
        case Reset():
            return "reset"
    return type(control).__name__


def _first(embeddings: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return embeddings[0]


def _lerp(start: float, target: float, t: float) -> float:
    return start + (target - start) * t


def _slerp_tokens(start: torch.Tensor, target: torch.Tensor, t: float) -> torch.Tensor:
    return slerp(start, target, t, dim=-1, lerp_norm=True)


def _slerp_noise(start: torch.Tensor, target: torch.Tensor, t: float) -> torch.Tensor:
    return slerp(start, target, t, dim=None, lerp_norm=False)


def _check_weights(name: str, weights: list[float]) -> None:
    if not weights or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise DreamwireError(f"{name} weights {weights} must be non-negative with a positive sum")
