"""The live engine: one thread owns the model and the device, and its loop reads

    while running: apply_pending_controls(); step()

Sources and sinks run on their own threads and meet the engine in latest-frame-wins slots, so a slow sink
never slows the engine and a stale input frame is dropped, not processed late. Other threads (OSC, the CLI)
send changes with set() / blend_prompts() / blend_seeds() / pause() / reset(): each is validated at once
(a bad value raises and the old one is kept), numbered (the request id they return) and applied between two
frames. A prompt change only swaps the embeddings, encoded off this thread; buffers and noise stay, so nothing
flashes.

Every request ends in exactly one EngineEvent with its id (add_listener): "applied" with the value now in effect,
"superseded" when a newer request for the same thing came first, or "error" with one line naming the value and
why. Applying a change never ends the loop.

One module per job: requests.py (sending, validation), control_queue.py (coalescing), changes.py (applying),
prompts.py (the prompt lifecycle), rebuild.py (rebuilds), io_bridges.py (sources and sinks), inputs.py (input
frames and their count), warmup.py (no brown warm-up frames), placeholder.py (a frame naming why there is no
picture yet).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

from bridges.base import Sink, Source
from bridges.uri import open_sink, open_source
from engine.config.schema import Preset
from engine.core.frames import Frame
from engine.core.instance import DEFAULT_INSTANCE, Instance
from engine.core.slot import LatestFrameSlot
from engine.core.supervisor import default_supervisor
from engine.live.changes import Changes
from engine.live.control_queue import ControlQueue
from engine.live.control_sources import ControlSources
from engine.live.controls import RequestedValues, SetValue
from engine.live.events import EngineEvent, EventHub, Listener, one_line
from engine.live.image_prompt import ImagePromptSource
from engine.live.in_effect import InEffect
from engine.live.inputs import InputBatcher
from engine.live.io_bridges import IoBridges
from engine.live.io_threads import SinkWorker, SourceWorker
from engine.live.metrics import EngineMetrics, status_line
from engine.live.placeholder import Placeholder
from engine.live.prompt_encoder import PromptEncoder
from engine.live.prompts import Prompts
from engine.live.rebuild import Rebuilds
from engine.live.requests import Requests
from engine.live.source_controls import SourceControls
from engine.live.tempo import Tempo
from engine.live.timing import TimedBackend
from engine.live.transitions import TransitionSet
from engine.live.warmup import WarmupHold, warmup_steps
from engine.pipeline.models import Models, load_models
from engine.pipeline.stream import StreamPipeline

log = logging.getLogger(__name__)

MAX_CONTROLS_PER_DRAIN = 64  # a burst is applied over several frames, never holding the picture
DRAIN_BUDGET = 0.010  # s: stop applying controls between two frames once this is spent (after at least one)

ENCODER_STOP_TIMEOUT = 0.5  # s: an encoding still running at stop is abandoned (its thread is a daemon)

FrameListener = Callable[[int, float], None]  # fn(frame_number, time.perf_counter() of the publish)


class LiveEngine:
    def __init__(self, preset: Preset, models: Models | None = None, instance: Instance = DEFAULT_INSTANCE) -> None:
        self.instance = instance  # default sender names and preview port of bridges (engine/core/instance.py)
        self.controls = ControlQueue()
        self.tempo = Tempo(preset.tempo)  # the beat clock, quantised changes and LFOs (engine/live/tempo.py)
        self._requests = Requests(preset, instance, self.controls, self.tempo)
        self.metrics = EngineMetrics()
        self.events = EventHub()  # applied changes and errors, for OSC feedback
        self._frame_listeners: tuple[FrameListener, ...] = ()
        self.now = InEffect(preset, models or load_models(preset.model), self.events)
        self.now.beat_now = self.tempo.clock.beat_at  # transitions in beats run on the beat clock
        self._stopping = threading.Event()  # set by stop() from any thread (a signal handler too)
        # preprocess_on source: control images made on the input's source thread (engine/live/source_controls.py)
        self.source_controls = SourceControls(lambda: self.pipeline)
        self.io = IoBridges(self._stream_size, self._stopping, self.metrics.on_input_frame, self.source_controls)
        self.metrics.set_source_state(self.io.source_state)
        self.metrics.set_tempo(self.tempo.status)  # bpm, beat and peers in the status line
        self.warmup = WarmupHold()  # live: the last good frame instead of the zero buffer's first outputs
        self.placeholder = Placeholder()  # until the source's first frame: a picture naming why there is none
        self.inputs = InputBatcher(self.io, self.metrics)
        self.control_sources = ControlSources(self._stream_size, instance)  # external ControlNets' sources
        self.image_prompt = ImagePromptSource(self._stream_size, instance)  # the IP-Adapter's image from a source
        self.controls.add_waker(self.inputs.wake)
        self.install(self.now.models, self._build(self.now.models, self.now.preset))
        self.prompts = Prompts(self.now)
        self.rebuilds = Rebuilds(self.now, self.requested, self.prompts, self.install)
        self.changes = Changes(self.now, self.prompts, self.rebuilds, self.io, self.forget_captures)
        self.changes.handlers["tempo"] = self._set_tempo
        self._status_shown = 0.0
        self._step_failures = 0  # steps failed in a row (the current failure streak)
        self.status_sources: list[Callable[[], dict[str, Any]]] = []  # more numbers for status(): the OSC counters

    # ---- what is in effect (engine/live/in_effect.py) -------------------------------------------------------

    @property
    def preset(self) -> Preset:
        """The values in effect."""
        return self.now.preset

    @property
    def models(self) -> Models:
        return self.now.models

    @property
    def pipeline(self) -> StreamPipeline:
        return self.now.pipeline

    @property
    def paused(self) -> bool:
        return self.now.paused

    @property
    def frame_number(self) -> int:
        """Output frames produced."""
        return self.now.frame_number

    # ---- other threads: send changes (engine/live/requests.py) ---------------------------------------------
    # Each returns the request id that the change's EngineEvent will carry.

    # A duration is seconds, frames, beats or bars (engine/live/tempo.py); quantize ("beat", "bar", "2bars",
    # "4bars"; None: tempo.quantize) holds the change until that moment minus tempo.latency_ms.

    def set(self, path: str, value: Any, seconds: float | None = None, frames: int | None = None, **timing: Any) -> int:
        """Change one parameter (dotted path from the registry); raises DreamwireError on a bad value.
        timing: beats=, bars=, quantize=."""
        return self._requests.set(path, value, seconds, frames, **timing)

    def blend_prompts(
        self,
        items: Sequence[tuple[str, float]],
        method: Literal["linear", "slerp"] = "slerp",
        seconds: float | None = None,
        frames: int | None = None,
        **timing: Any,
    ) -> int:
        """Blend the embeddings of several prompts by weight (normalised), at once or over a duration."""
        return self._requests.blend_prompts(items, method, seconds, frames, **timing)

    def blend_seeds(
        self, items: Sequence[tuple[int, float]], seconds: float | None = None, frames: int | None = None, **timing: Any
    ) -> int:
        """Blend the fixed noise of several seeds by weight (slerp), at once or over a duration."""
        return self._requests.blend_seeds(items, seconds, frames, **timing)

    def pause(self, paused: bool = True) -> int:
        return self._requests.pause(paused)

    def reset(self) -> int:
        return self._requests.reset()

    @property
    def requested(self) -> RequestedValues:
        """The values asked for (validated), ahead of the engine."""
        return self._requests.requested

    def stop(self) -> None:
        self._stopping.set()
        self.inputs.wake()

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(EngineEvent)` on the engine thread for every change applied and every failure."""
        self.events.add(listener)

    def add_frame_listener(self, listener: FrameListener) -> None:
        """Call `listener(frame_number, perf_counter_time)` on the engine thread after each step that published
        new output frames (frame_number: output frames produced so far); quick and never blocking."""
        self._frame_listeners = (*self._frame_listeners, listener)

    def status(self) -> dict[str, Any]:
        """The live numbers (see engine/live/metrics.py) plus the engine's state (paused, rebuilding, step_failures:
        steps failed in a row), the supervisor's thread numbers (thread_deaths, thread_restarts, threads_failing,
        last_thread_error) and the status_sources' numbers, for the OSC bridge and the CLI."""
        extra = {key: value for source in self.status_sources for key, value in source().items()}
        state = {"paused": self.paused, "rebuilding": self.rebuilding, "step_failures": self._step_failures}
        tempo = self.tempo.status()  # bpm, beat, peers, quantised changes held, LFOs (engine/live/tempo.py)
        return {**self.metrics.snapshot(), **state, **tempo, **default_supervisor().snapshot(), **extra}

    @property
    def rebuilding(self) -> bool:
        return self.rebuilds.running is not None

    @property
    def busy(self) -> bool:
        """Something is still to happen without a new request: queued, encoding, rebuilding or moving."""
        return (
            not self.controls.empty()
            or self.prompts.encoding()
            or self.rebuilding
            or len(self.transitions) > 0
            or len(self.tempo.quantiser) > 0
        )

    # ---- the parts, for tools and tests -----------------------------------------------------------------------

    @property
    def encoder(self) -> PromptEncoder:
        return self.prompts.encoder

    @property
    def transitions(self) -> TransitionSet:
        return self.now.transitions

    @property
    def input_slot(self) -> LatestFrameSlot[Frame]:
        return self.io.input_slot

    @property
    def source_worker(self) -> SourceWorker | None:
        return self.io.source_worker

    @property
    def sink_workers(self) -> list[tuple[SinkWorker, LatestFrameSlot[Frame]]]:
        return self.io.sink_workers

    # ---- the engine thread ------------------------------------------------------------------------------

    def run(self, duration: float | None = None) -> None:
        """Run until stop(), the duration (seconds) or the end of a file source; sinks are flushed on the way out."""
        self.start_io()
        deadline = None if duration is None else time.perf_counter() + duration
        log.info("running: %s → %s", self.preset.io.input, ", ".join(self.preset.io.outputs) or "(no output)")
        try:
            while not self._stopping.is_set() and (deadline is None or time.perf_counter() < deadline):
                self.apply_pending_controls()
                if not self.step() and self.io.source_finished():
                    break  # a file source ended and every frame is processed
        finally:
            self.close()

    def apply_pending_controls(self) -> None:
        """Install a finished rebuild, apply what was sent (a bounded share of a burst: the rest waits for the
        next frame) and what the encoder finished, then advance the transitions. Each is guarded: a failure is
        one log line and an error event, and the next one is applied."""
        self.inputs.woken()
        self.rebuilds.poll()
        self._report_superseded()
        for control in self.tempo.quantiser.due():  # quantised changes whose beat (minus the lookahead) has come
            if self.rebuilds.waits(control):
                self.controls.put(control)  # its moment has passed: applied as soon as the rebuild lets it
            else:
                self.changes.apply_guarded(control)
        deadline = time.perf_counter() + DRAIN_BUDGET
        for _ in range(MAX_CONTROLS_PER_DRAIN):
            control = self.controls.take(self.rebuilds.waits)
            if control is None:
                break
            if self.tempo.quantiser.hold(control):
                continue
            self.changes.apply_guarded(control)
            if time.perf_counter() > deadline:
                self.inputs.wake()  # more may be queued: the next step takes only a frame that is already there
                break
        else:
            self.inputs.wake()
        self._report_superseded()
        self.prompts.poll()
        self.now.advance_transitions()
        self.tempo.modulators.apply(self.preset, self.changes.modulate)  # LFOs: no queue, no events

    def _set_tempo(self, control: SetValue) -> None:
        """tempo.*: into the beat clock (engine/live/tempo.py)."""
        self.tempo.apply(control.path, control.value)
        self.now.store(control)
        self.events.applied(control, control.value)

    def _report_superseded(self) -> None:
        for control, newer in self.controls.take_superseded():
            self.events.superseded(control, f"superseded by request {newer} before it was applied")

    def step(self) -> bool:
        """Process the newest input (held during a rebuild; nothing while paused). False when no input came.

        Guarded: a step that raises is one log line and an error event (path "step") per failure streak; the
        last good frame keeps going out, and the next frame tries again."""
        try:
            return self._step()
        except Exception as error:
            self._step_failed(error)
            self.io.publish(self.io.last_outputs)
            return True

    def _step(self) -> bool:
        frames = self.inputs.take(self.now.pipeline.frames)
        if frames is None:
            if not self.io.last_outputs:  # no picture yet: one that says why (once per reason)
                placeholder = self.placeholder.frame(self.io.source_worker, *self._stream_size(), self.frame_number)
                if placeholder is not None:
                    self.io.publish([placeholder], keep=False)
            elif self.io.source_lost():
                self.io.publish(self.io.last_outputs)  # the source is lost: keep the last frame going out
            return False
        if self.rebuilds.running is not None:
            self.io.publish(self.io.last_outputs)  # keep sending the last frame until the new pipeline is ready
        elif not self.now.paused:
            outputs = self.process(frames)  # warm-up outputs (the zero buffer's) give way to the last good frame
            self.io.publish(self.warmup.outputs(outputs, frames, self.io.last_outputs, self.pipeline.skipped))
            if self._step_failures:
                log.info("step works again after %d failed frames", self._step_failures)
                self._step_failures = 0
            self._tell_frame_listeners()
        self._show_status()
        return True

    def _tell_frame_listeners(self) -> None:
        now = time.perf_counter()
        for listener in self._frame_listeners:
            try:
                listener(self.now.frame_number, now)
            except Exception:  # a tool's bug is not a failed step
                log.exception("frame listener %r failed", listener)

    def _step_failed(self, error: Exception) -> None:
        """The first failure of a streak: one error line and one event; the next ones in the streak at debug."""
        self._step_failures += 1
        if self._step_failures > 1:
            log.debug("step failed again (%d in a row): %s", self._step_failures, one_line(error))
            return
        message = f"step failed, holding the last frame and trying again each frame: {one_line(error)}"
        log.error("%s", message)
        log.debug("step failure", exc_info=error)
        self.events.emit(EngineEvent("error", "step", message=message))

    def _show_status(self) -> None:
        """At most twice a second: the status line to the sinks that display text (through their own threads)."""
        now = time.perf_counter()
        if not self.io.sink_workers or now - self._status_shown < 0.5:
            return
        self._status_shown = now
        self.io.show_status(status_line(self.metrics.snapshot()))

    def process(self, frames: list[Frame]) -> list[Frame]:
        """One pipeline step on f input frames → the f frames leaving the pipeline (n − 1 steps later)."""
        image = None if self._txt2img else self.loader(np.stack([frame.image for frame in frames]))
        self.control_sources.load(self.pipeline)  # the external ControlNets' newest control images
        self.image_prompt.load(self.pipeline)  # the IP-Adapter's newest image tokens
        self.source_controls.load(self.pipeline, frames)  # and those made on the source thread for these frames
        output = self.pipeline.step(image)
        skipped = self.pipeline.skipped
        host = self.to_host(output)  # (f, H, W, 3): the one host sync of a frame
        now = time.perf_counter()
        if not skipped:
            self._captures.append([frame.capture_time for frame in frames])
        # The frames leaving now entered n − 1 steps ago (during warm-up: the current ones).
        captures = self._captures[0] if len(self._captures) == self._captures.maxlen else self._captures[-1]
        self.unet_timer.end_frame()
        outputs = []
        for i in range(host.shape[0]):
            outputs.append(Frame(host[i], self.now.frame_number, captures[i]))
            self.metrics.on_output_frame(captures[i], now, self.unet_timer.latest_ms(), skipped)
            self.now.frame_number += 1
        return outputs

    def forget_captures(self) -> None:
        """After a reset: the frames in the pipeline are gone, and so are their capture times; the buffer is
        empty again, so its first outputs are held (engine/live/warmup.py)."""
        self._captures.clear()
        self._restart_warmup(self.pipeline)

    def _restart_warmup(self, pipeline: StreamPipeline) -> None:
        self.warmup.restart(warmup_steps(pipeline.slots, pipeline.config.use_denoising_batch))

    # ---- the pipeline -------------------------------------------------------------------------------------

    def _build(self, models: Models, preset: Preset) -> StreamPipeline:
        return StreamPipeline.prepared(
            models,
            preset.stream,
            preset.prompt,
            preset.filter,
            controlnets=preset.controlnets,
            processors=preset.processors,
            feature_bank=preset.feature_bank,
            loras=preset.loras,
            ip_adapter=preset.ip_adapter,
        )

    def install(self, models: Models, pipeline: StreamPipeline) -> None:
        """Run `pipeline` (built for `models`) from the next step on."""
        self.now.models, self.now.pipeline = models, pipeline
        self.unet_timer = TimedBackend(pipeline.unet, models.device)
        pipeline.unet = self.unet_timer
        stream = pipeline.config
        self.loader, self.to_host = pipeline.frame_loader(), pipeline.host_frames()
        self._txt2img = stream.mode != "img2img"
        self._captures: deque[list[float]] = deque(maxlen=len(stream.t_index_list))
        self.inputs.keep_last(pipeline.frames)
        self._restart_warmup(pipeline)

    # ---- inputs and outputs ------------------------------------------------------------------------------

    def start_io(self, source: Source | None = None, sinks: Sequence[Sink] | None = None) -> None:
        """Start the source and sink threads (from the preset's io URIs unless bridges are given)."""
        io = self.preset.io
        self.io.swap_source(source or open_source(io.input, self.instance), io.input)
        if sinks is None:
            self.io.swap_sinks([open_sink(uri, self.instance) for uri in io.outputs], io.outputs)
        else:
            self.io.swap_sinks(list(sinks), [sink.name for sink in sinks])
        self.control_sources.start(self.pipeline)
        self.image_prompt.start(self.pipeline)

    def _stream_size(self) -> tuple[int, int]:
        """(height, width) of the stream, read by the source thread for every frame (a rebuild may change it)."""
        stream = self.preset.stream
        return stream.height, stream.width

    def close(self) -> None:
        """Stop the bridges (files are flushed and closed), the encoder and the rebuild thread."""
        self._stopping.set()
        for control in self.tempo.quantiser.release_all():  # every request ends in one event
            self.events.superseded(control, "the engine stopped before its beat")
        self.io.close()
        self.control_sources.close()
        self.image_prompt.close()
        self.prompts.close(ENCODER_STOP_TIMEOUT)
        self.rebuilds.close()
        self.metrics.close()
