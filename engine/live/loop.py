"""The live engine: one thread owns the model and the device, and its loop reads

    while running: apply_pending_controls(); step()

Sources and sinks run on their own threads and meet the engine in latest-frame-wins slots, so a slow sink
never slows the engine and a stale input frame is dropped, not processed late. Other threads (OSC, the CLI)
send changes with set() / blend_prompts() / blend_seeds() / pause() / reset(): each is validated at once
(a bad value raises and the old one is kept), numbered (the request id they return) and applied between two
frames. A prompt change only swaps the embeddings, encoded off this thread; buffers and noise stay, so nothing
flashes.

Every request ends in exactly one EngineEvent with its id (add_listener): "applied" with the value now in effect,
or "error" with one line naming the value and why (an encoding failed, a rebuild failed, a newer request for the
same thing superseded it). Applying a change never ends the loop. The newest request per key wins: a prompt
embedding or a rebuild that arrives for an older request is dropped, never applied under another's settings.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from bridges.base import Sink, Source
from bridges.pixels import FrameConformer
from bridges.uri import open_sink, open_source, source_fit
from engine.config.registry import registry
from engine.config.schema import Preset
from engine.core.errors import DreamwireError
from engine.core.frames import Frame
from engine.core.instance import DEFAULT_INSTANCE, Instance
from engine.core.slot import LatestFrameSlot
from engine.live.blending import check_blend_weights
from engine.live.controls import (
    BlendPrompts,
    BlendSeeds,
    Control,
    Pause,
    RequestedValues,
    Reset,
    SetValue,
    spec_of,
)
from engine.live.events import EngineEvent, EventHub, Listener
from engine.live.io_threads import SinkWorker, SourceWorker
from engine.live.metrics import EngineMetrics, status_line
from engine.live.prompt_encoder import EncodeFailure, EncodeResult, PromptEncoder
from engine.live.rebuild import Rebuild, build_pipeline
from engine.live.targets import (
    MORPHS,
    NoiseSource,
    PromptSource,
    combine_prompt,
    noise_of,
    prompt_texts,
    set_noise_cut,
)
from engine.live.threads import limit_torch_threads
from engine.live.timing import TimedBackend
from engine.live.transitions import Duration, TransitionSet, Value
from engine.pipeline.models import Models, load_models
from engine.pipeline.stream import StreamPipeline

log = logging.getLogger(__name__)

# Controls that change the pipeline wait while a rebuild runs and are applied to the new one (the old pipeline's
# frame is held meanwhile, so nothing is lost by waiting). Pause, io changes and rebuilds themselves go ahead.
_GOES_AHEAD_OF_A_REBUILD = frozenset({"source", "sinks", "rebuild"})


@dataclass
class _PendingPrompt:
    source: PromptSource  # the request: prompt.text / prompt.negative, or prompt.blend
    seq: int  # the encoder's number for it: a result with another number is for an older request
    announce: bool = True  # False: an encoding again for another model, of a change already reported


class LiveEngine:
    def __init__(self, preset: Preset, models: Models | None = None, instance: Instance = DEFAULT_INSTANCE) -> None:
        self.instance = instance  # default sender names and preview port of bridges (engine/core/instance.py)
        self.preset = preset.model_copy(deep=True)  # the values in effect
        self.requested = RequestedValues(preset)  # the values asked for (validated), ahead of the engine
        self.controls: queue.SimpleQueue[Control] = queue.SimpleQueue()
        self._send_lock = threading.Lock()  # request ids, requested values and queue order agree
        self._request_ids = itertools.count(1)
        self.metrics = EngineMetrics()
        self.events = EventHub()  # applied changes and errors, for OSC feedback
        self.models = models or load_models(preset.model)
        self.encoder = PromptEncoder(self.models.encode_prompt)
        self._install(self.models, self._build(self.models, self.preset))
        self.transitions = TransitionSet()
        self._moving: dict[str, Control] = {}  # transition name -> the request that started it
        # What the embeddings and the noise are made of: the last change applied to each (a text or a blend, a
        # seed or a seed blend). A fresh prepare with these and self.preset gives the pipeline's tensors.
        self.prompts: dict[str, PromptSource] = {
            "cond": SetValue("prompt.text", preset.prompt.text),
            "uncond": SetValue("prompt.negative", preset.prompt.negative),
        }
        self.noise_source: NoiseSource = SetValue("prompt.seed", preset.prompt.seed)
        self._pending: dict[str, _PendingPrompt] = {}  # "cond" / "uncond" -> the newest request being encoded
        self._handlers: dict[str, Callable[[SetValue], None]] = {  # one per schema `apply` name
            "cond": self._request_prompt,
            "uncond": self._request_prompt,
            "guidance": self._set_number,
            "delta": self._set_number,
            "noise": self._set_noise,
            "schedule": self._set_schedule,
            "filter": self._set_filter,
            "source": self._set_source,
            "sinks": self._set_sinks,
            "rebuild": self._request_rebuild,
        }
        # The rebuild thread sets its own thread count (one, so it never competes with the engine's team).
        self._rebuilder = ThreadPoolExecutor(1, "dreamwire-rebuild", initializer=limit_torch_threads, initargs=(1,))
        self._rebuild: Rebuild | None = None
        self._deferred: list[Control] = []  # changes that arrived during a rebuild, for the new pipeline
        self.paused = False
        self.frame_number = 0  # output frames produced
        self._last_outputs: list[Frame] = []
        self._stopping = threading.Event()  # set by stop() from any thread (a signal handler too)
        self.input_slot: LatestFrameSlot[Frame] = LatestFrameSlot()
        self._collected: list[Frame] = []  # input frames gathered towards the next step's f
        self.source_worker: SourceWorker | None = None
        self.sink_workers: list[tuple[SinkWorker, LatestFrameSlot[Frame]]] = []
        self._sink_uris: list[str] = []  # the URI of each sink worker
        self._io_swaps: list[threading.Thread] = []  # old bridges stopping (then new ones starting), off this thread
        self._seen_input, self._seen_dropped = 0, 0
        self._status_shown = 0.0
        self.status_sources: list[Callable[[], dict[str, Any]]] = []  # more numbers for status(): the OSC counters
        self._frame_listeners: tuple[Callable[[int, float], None], ...] = ()

    # ---- other threads: send changes ------------------------------------------------------------------
    # Each returns the request id that the change's EngineEvent will carry.

    def set(self, path: str, value: Any, seconds: float | None = None, frames: int | None = None) -> int:
        """Change one parameter (dotted path from the registry); raises DreamwireError on a bad value."""
        duration = Duration(seconds, frames)
        spec = spec_of(path)
        if not duration.is_cut and spec.apply not in MORPHS:
            movable = ", ".join(p for p, s in registry().items() if s.apply in MORPHS)
            raise DreamwireError(f"{path} cannot change over a duration, only at once (these can: {movable})")
        checked = self.requested.validate(path, value, keep=False)
        # io: build the bridges here (building opens nothing), so a bad URI is refused to the sender.
        bridges: tuple[Source | Sink, ...] = ()
        if spec.apply == "source":
            bridges = (open_source(checked, self.instance),)
        elif spec.apply == "sinks":
            bridges = tuple(open_sink(uri, self.instance) for uri in checked)
        return self._send(
            lambda rid: SetValue(path, self.requested.validate(path, value, request_id=rid), duration, bridges, rid)
        )

    def blend_prompts(
        self,
        items: Sequence[tuple[str, float]],
        method: Literal["linear", "slerp"] = "slerp",
        seconds: float | None = None,
        frames: int | None = None,
    ) -> int:
        """Blend the embeddings of several prompts by weight (normalised), at once or over a duration."""
        duration = Duration(seconds, frames)
        pairs = _pairs("prompt.blend", items)
        weights = check_blend_weights("prompt.blend", [w for _, w in pairs])
        if method not in ("linear", "slerp"):
            raise DreamwireError(f"prompt.blend method {method!r} is unknown (allowed: linear, slerp)")
        texts = [self.requested.validate("prompt.text", text, keep=False) for text, _ in pairs]
        blend = tuple(zip(texts, weights, strict=True))
        return self._send(lambda rid: BlendPrompts(blend, method, duration, rid))

    def blend_seeds(
        self, items: Sequence[tuple[int, float]], seconds: float | None = None, frames: int | None = None
    ) -> int:
        """Blend the fixed noise of several seeds by weight (slerp), at once or over a duration."""
        duration = Duration(seconds, frames)
        pairs = _pairs("seed.blend", items)
        weights = check_blend_weights("seed.blend", [w for _, w in pairs])
        seeds = [self.requested.validate("prompt.seed", seed, keep=False) for seed, _ in pairs]
        blend = tuple(zip(seeds, weights, strict=True))
        return self._send(lambda rid: BlendSeeds(blend, duration, rid))

    def pause(self, paused: bool = True) -> int:
        if paused not in (True, False):  # True, False, 1, 0
            raise DreamwireError(f"pause {paused!r} is not a bool (true/false or 1/0)")
        return self._send(lambda rid: Pause(bool(paused), rid))

    def reset(self) -> int:
        return self._send(lambda rid: Reset(rid))

    def _send(self, make: Callable[[int], Control]) -> int:
        """Number the control and queue it, under one lock, so ids, requested values and queue order agree."""
        with self._send_lock:
            control = make(next(self._request_ids))
            self.controls.put(control)
        return control.request_id

    def stop(self) -> None:
        self._stopping.set()

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(EngineEvent)` on the engine thread for every change applied and every failure."""
        self.events.add(listener)

    def add_frame_listener(self, listener: Callable[[int, float], None]) -> None:
        """Call `listener(frame_number, time.perf_counter())` on the engine thread after each published output
        (for timing, e.g. the bench: it must be quick)."""
        self._frame_listeners = (*self._frame_listeners, listener)

    def status(self) -> dict[str, Any]:
        """The live numbers (see engine/metrics.py) plus the engine's state, for the OSC bridge and the CLI."""
        extra = {key: value for source in self.status_sources for key, value in source().items()}
        return {**self.metrics.snapshot(), "paused": self.paused, "rebuilding": self._rebuild is not None, **extra}

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
        """Apply what was sent, what the encoder finished and a finished rebuild, then advance the transitions.
        Each is guarded: a failure is one log line and an error event, and the next one is applied."""
        while True:
            try:
                control = self.controls.get_nowait()
            except queue.Empty:
                break
            self._apply_guarded(control)
        for result in self.encoder.poll():
            self._on_encoded(result)
        if self._rebuild is not None and self._rebuild.future.done():
            self._finish_rebuild()
        self._advance_transitions()

    def _advance_transitions(self) -> None:
        for name, value in self.transitions.advance(time.perf_counter(), self.frame_number).items():
            try:
                MORPHS[name].set(self.pipeline, value)
            except Exception as error:  # stop this transition where it is; the others go on
                self.transitions.cancel(name)
                log.debug("transition %s failed", name, exc_info=error)
                self._refuse(self._moving[name], f"its transition stopped: {_one_line(error)}")

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
        """At most twice a second: the status line to the sinks that display text (through their own threads)."""
        now = time.perf_counter()
        if not self.sink_workers or now - self._status_shown < 0.5:
            return
        self._status_shown = now
        line = status_line(self.metrics.snapshot())
        for worker, _ in self.sink_workers:
            worker.set_status(line)

    def process(self, frames: list[Frame]) -> list[Frame]:
        """One pipeline step on f input frames → the f frames leaving the pipeline (n − 1 steps later)."""
        image = None if self._txt2img else self.loader(np.stack([frame.image for frame in frames]))
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
            outputs.append(Frame(host[i], self.frame_number, captures[i]))
            self.metrics.on_output_frame(captures[i], now, self.unet_timer.latest_ms(), skipped)
            self.frame_number += 1
        return outputs

    # ---- inputs and outputs ------------------------------------------------------------------------------

    def start_io(self, source: Source | None = None, sinks: Sequence[Sink] | None = None) -> None:
        """Start the source and sink threads (from the preset's io URIs unless bridges are given)."""
        self._swap_source(source or open_source(self.preset.io.input, self.instance))
        if sinks is None:
            self._swap_sinks([open_sink(uri, self.instance) for uri in self.preset.io.outputs], self.preset.io.outputs)
        else:
            self._swap_sinks(list(sinks), [sink.name for sink in sinks])

    def _swap_source(self, source: Source) -> None:
        old = [self.source_worker] if self.source_worker is not None else []
        self.input_slot = LatestFrameSlot()
        self._collected = []
        self._seen_input, self._seen_dropped = 0, 0
        # Frames are checked and brought to the stream's size (the URI's fit) on the source's thread.
        conform = FrameConformer(f"source {source.name}", self._stream_size, source_fit(self.preset.io.input))
        self.source_worker = SourceWorker(source, self.input_slot, conform=conform)
        self._swap_workers(old, [self.source_worker])

    def _stream_size(self) -> tuple[int, int]:
        """(height, width) of the stream, read by the source thread for every frame (a rebuild may change it)."""
        stream = self.preset.stream
        return stream.height, stream.width

    def _swap_sinks(self, sinks: list[Sink], uris: Sequence[str]) -> None:
        """The sinks for these URIs: one already running for a URI keeps running (a recording goes on in its
        file, the preview keeps its port); the others start, and those no longer listed stop."""
        running = dict(zip(self._sink_uris, self.sink_workers, strict=True))
        self.sink_workers, new = [], []
        for sink, uri in zip(sinks, uris, strict=True):
            kept = running.pop(uri, None)
            if kept is None:
                slot: LatestFrameSlot[Frame] = LatestFrameSlot()
                kept = (SinkWorker(sink, slot), slot)
                new.append(kept[0])
            self.sink_workers.append(kept)
        self._sink_uris = list(uris)
        self._swap_workers([worker for worker, _ in running.values()], new)

    def _swap_workers(self, old: Sequence[SourceWorker | SinkWorker], new: Sequence[SourceWorker | SinkWorker]) -> None:
        """Stop the old bridges (up to 2 s each: a file is finished) and then start the new ones, on a thread of
        its own so the engine never waits; the new slots take frames meanwhile. Old before new, because a new
        bridge may open what an old one still holds (the same file, the same port)."""
        if not old:
            for worker in new:
                worker.start()
            return

        def swap() -> None:
            for worker in old:
                worker.stop()
            for worker in new:
                if not self._stopping.is_set():
                    worker.start()

        thread = threading.Thread(target=swap, name="dreamwire-io-swap", daemon=True)
        self._io_swaps = [t for t in self._io_swaps if t.is_alive()] + [thread]
        thread.start()

    def close(self) -> None:
        """Stop the bridges (files are flushed and closed), the encoder and the rebuild thread."""
        self._stopping.set()
        for thread in self._io_swaps:  # old bridges first: they finish their files
            thread.join(timeout=5.0)
        if self.source_worker is not None:
            self.source_worker.stop()
            self.source_worker = None
        for worker, _ in self.sink_workers:
            worker.stop()
        self.sink_workers, self._sink_uris = [], []
        self.encoder.close()
        self._rebuilder.shutdown(wait=False, cancel_futures=True)
        self.metrics.close()

    def _take_input(self) -> list[Frame] | None:
        """The next f frames, newest first come; None if they have not all arrived within 0.1 s (those that did
        are kept for the next call, so a slow source still fills a batch of f)."""
        f = self.pipeline.frames
        while len(self._collected) < f:
            frame = self.input_slot.get(timeout=0.1)
            self._count_input()
            if frame is None:
                return None
            if self._collected and self._collected[0].image.shape != frame.image.shape:
                self._collected = []  # the source's size changed (a rebuild to another size): one size per batch
            self._collected.append(frame)
        frames, self._collected = self._collected[-f:], []
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
        for listener in self._frame_listeners:
            try:
                listener(self.frame_number, time.perf_counter())
            except Exception:  # a listener's bug must not end the show
                log.exception("frame listener %r failed", listener)

    # ---- outcomes ----------------------------------------------------------------------------------------

    def _applied(self, control: Control, value: Any = None) -> None:
        self.events.emit(EngineEvent("applied", control.path, value=value, request_id=control.request_id))

    def _refuse(self, control: Control, why: str) -> None:
        """One log line and an error event naming the value and why it was not applied."""
        shown = "" if control.value is None else f" {_shown(control.value)}"
        message = f"{control.path}{shown} was not applied: {why}"
        log.error("%s", message)
        self.events.emit(EngineEvent("error", control.path, message=message, request_id=control.request_id))

    def _superseded(self, control: Control, why: str) -> None:
        """The newest request wins: an older one still pending is dropped, told so, and only logged at debug."""
        shown = "" if control.value is None else f" {_shown(control.value)}"
        message = f"{control.path}{shown} was not applied: {why}"
        log.debug("%s", message)
        self.events.emit(EngineEvent("superseded", control.path, message=message, request_id=control.request_id))

    def _apply_guarded(self, control: Control) -> None:
        try:
            self._apply(control)
        except Exception as error:  # checked when sent; whatever still fails is one line, never the end of the loop
            log.debug("applying %s failed", control, exc_info=error)
            self._refuse(control, _one_line(error))

    # ---- applying changes -------------------------------------------------------------------------------

    def _apply(self, control: Control) -> None:
        if self._rebuild is not None and self._waits_for_rebuild(control):
            self._deferred.append(control)
            return
        match control:
            case SetValue():
                self._handlers[spec_of(control.path).apply](control)
            case BlendPrompts():
                self._request_prompt(control)
            case BlendSeeds():
                self._set_noise(control)
            case Pause(paused):
                self.paused = paused
                log.info("paused" if paused else "resumed")
                self._applied(control, paused)
            case Reset():
                self._reset(control)

    def _waits_for_rebuild(self, control: Control) -> bool:
        if isinstance(control, SetValue):
            return spec_of(control.path).apply not in _GOES_AHEAD_OF_A_REBUILD
        return not isinstance(control, Pause)

    def _store(self, control: SetValue) -> None:
        """The value is now in effect."""
        section, name = control.path.split(".")
        setattr(getattr(self.preset, section), name, control.value)

    def _set_number(self, control: SetValue) -> None:
        """guidance, delta: at once or over the duration."""
        self._move(spec_of(control.path).apply, float(control.value), control)
        self._store(control)
        self._applied(control, control.value)

    def _set_noise(self, control: NoiseSource) -> None:
        """prompt.seed or seed.blend: the fixed noise, at once or over the duration (slerp)."""
        if control.duration.is_cut:
            self.transitions.cancel("noise")
            set_noise_cut(control, self.pipeline)
        else:
            self._move("noise", noise_of(control, self.pipeline), control)
        self.noise_source = control
        if isinstance(control, SetValue):
            self._store(control)
        self._applied(control, control.value)

    def _set_schedule(self, control: SetValue) -> None:
        """t_index_list, num_inference_steps: new tables for the same number of slots; buffers and noise kept."""
        stream = self.preset.stream.model_copy(deep=True)
        setattr(stream, control.path.split(".")[1], control.value)
        if len(stream.t_index_list) != self.pipeline.slots:
            self._request_rebuild(control)  # another number of slots: new buffer shapes
            return
        self.pipeline.set_schedule(stream.t_index_list, stream.num_inference_steps)
        self._store(control)
        self._applied(control, control.value)

    def _set_filter(self, control: SetValue) -> None:
        config = self.preset.filter.model_copy()
        setattr(config, control.path.split(".")[1], control.value)
        self.pipeline.set_filter(config, seed=self.preset.prompt.seed)
        self._store(control)
        self._applied(control, control.value)

    def _set_source(self, control: SetValue) -> None:
        self._swap_source(control.bridges[0])
        self._store(control)
        self._applied(control, control.value)

    def _set_sinks(self, control: SetValue) -> None:
        self._swap_sinks(list(control.bridges), control.value)
        self._store(control)
        self._applied(control, control.value)

    def _reset(self, control: Reset) -> None:
        """Re-prepare with everything in effect: empty buffers and the noise afresh; embeddings kept."""
        self._finish_transitions()
        pipeline = self.pipeline
        pipeline.prepare(self.preset.prompt, self.preset.filter, (pipeline.cond, pipeline.uncond))
        set_noise_cut(self.noise_source, pipeline)
        self._captures.clear()
        log.info("reset: fresh noise and empty buffers")
        self._applied(control)

    def _move(self, name: str, target: Value, control: SetValue | BlendPrompts | BlendSeeds) -> None:
        """Apply now (a cut), or start a transition that applies a value every frame until it reaches target."""
        morph, duration = MORPHS[name], control.duration
        if duration.is_cut:
            self.transitions.cancel(name)
            morph.set(self.pipeline, target)
        else:
            start = morph.get(self.pipeline)
            self.transitions.start(name, start, target, duration.seconds, duration.frames, interp=morph.interp)
            self._moving[name] = control

    def _finish_transitions(self) -> None:
        """Every running transition lands on its target now (before a reset or a rebuild: cuts anyway)."""
        for name, target in self.transitions.finish().items():
            MORPHS[name].set(self.pipeline, target)

    # ---- prompts: encoded off this thread, newest request per embedding wins --------------------------------

    def _request_prompt(self, control: PromptSource) -> None:
        """Encode off this thread; the old prompt keeps rendering until the embedding is ready."""
        key = "cond" if isinstance(control, BlendPrompts) else spec_of(control.path).apply
        previous = self._pending.pop(key, None)
        if previous is not None:
            self._superseded(previous.source, f"superseded by request {control.request_id} before it was encoded")
        self._pending[key] = _PendingPrompt(control, self.encoder.request(key, prompt_texts(control)))

    def _on_encoded(self, result: EncodeResult | EncodeFailure) -> None:
        key = str(result.key)
        pending = self._pending.get(key)
        if pending is None or pending.seq != result.seq:
            log.debug("dropped the encoding of an older %s request (seq %d)", key, result.seq)
            return  # its request was superseded, and told so then
        del self._pending[key]
        try:
            self._swap_in(key, pending, result)
        except Exception as error:  # e.g. a blend of embeddings that do not fit: one line, the old prompt stays
            log.debug("applying the encoding of %s failed", pending.source, exc_info=error)
            self._refuse(pending.source, _one_line(error))

    def _swap_in(self, key: str, pending: _PendingPrompt, result: EncodeResult | EncodeFailure) -> None:
        """The newest request's encoding: its embedding goes in (at once or over its duration)."""
        source = pending.source
        if isinstance(result, EncodeFailure):  # (for another model's encoding: the build's encoding stays)
            raise DreamwireError(f"{result.text!r} could not be encoded ({result.message}); the prompt is unchanged")
        target = combine_prompt(source, result.embeddings).to(self.models.device, self.models.dtype)
        current = MORPHS[key].get(self.pipeline)
        if target.shape != current.shape:
            raise DreamwireError(f"the encoder gave shape {tuple(target.shape)}, not {tuple(current.shape)}")
        self._move(key, target, source)
        self.prompts[key] = source
        if isinstance(source, SetValue):
            self._store(source)
        if pending.announce:
            self._applied(source, source.value)

    # ---- rebuilds ----------------------------------------------------------------------------------------

    def _build(self, models: Models, preset: Preset) -> StreamPipeline:
        return StreamPipeline.prepared(models, preset.stream, preset.prompt, preset.filter)

    def _install(self, models: Models, pipeline: StreamPipeline) -> None:
        self.models, self.pipeline = models, pipeline
        self.unet_timer = TimedBackend(pipeline.unet, models.device)
        pipeline.unet = self.unet_timer
        stream = pipeline.config
        self.loader, self.to_host = pipeline.frame_loader(), pipeline.host_frames()
        self._txt2img = stream.mode != "img2img"
        self._captures: deque[list[float]] = deque(maxlen=len(stream.t_index_list))

    def _request_rebuild(self, control: SetValue) -> None:
        """Build a pipeline with this change (and those of a rebuild still building) in the background."""
        running = self._rebuild
        target = (running.target if running is not None else self.preset).model_copy(deep=True)
        section, name = control.path.split(".")
        setattr(getattr(target, section), name, control.value)  # validated again: a bad value is refused here
        target.prompt, target.filter = self.preset.prompt.model_copy(), self.preset.filter.model_copy()
        requests = dict(running.requests) if running is not None else {}
        older = requests.pop(control.path, None)
        if older is not None:
            self._superseded(older, f"superseded by request {control.request_id} before the rebuild finished")
        requests[control.path] = control
        if running is not None:
            running.future.cancel()  # not started yet: never runs; already building: its result is dropped
        same_models = target.model == self.preset.model
        embeddings = (self._effective("cond"), self._effective("uncond")) if same_models else None
        prompts = dict(self.prompts)
        models = self.models if same_models else None  # None: the rebuild thread loads the new ones
        future = self._rebuilder.submit(build_pipeline, models, target, prompts, embeddings)
        self._rebuild = Rebuild(target, requests, future, prompts)
        log.info("%s changed: rebuilding the pipeline (the last frame is held meanwhile)", control.path)

    def _effective(self, name: str) -> Any:
        """A morphing value as it will be when its transition (if any) ends."""
        running = self.transitions.target_of(name)
        return running if running is not None else MORPHS[name].get(self.pipeline)

    def _finish_rebuild(self) -> None:
        rebuild, self._rebuild = self._rebuild, None
        assert rebuild is not None
        try:
            models, pipeline = rebuild.future.result()
            self._switch_pipeline(models, pipeline, rebuild)
        except Exception as error:  # a failed rebuild must never end the show: keep what runs
            log.debug("rebuild failed", exc_info=error)
            why = f"rebuild failed, keeping the running pipeline: {_one_line(error)}"
            for control in rebuild.requests.values():
                section, name = control.path.split(".")
                self.requested.revert(control.path, getattr(getattr(self.preset, section), name), control.request_id)
                self._refuse(control, why)
            log.error("%s", why)
            self.events.emit(EngineEvent("error", "rebuild", message=why))
        else:
            for control in rebuild.requests.values():
                self._applied(control, control.value)
            self.events.emit(EngineEvent("applied", "rebuild", value=self.preset.model_copy(deep=True)))
            stream = self.preset.stream
            log.info(
                "rebuild done: %dx%d, cfg %s, %d steps",
                stream.width,
                stream.height,
                stream.cfg_type,
                len(stream.t_index_list),
            )
        deferred, self._deferred = self._deferred, []
        for control in deferred:  # in the order they were sent; one may start another rebuild
            self._apply_guarded(control)

    def _switch_pipeline(self, models: Models, pipeline: StreamPipeline, rebuild: Rebuild) -> None:
        """Install the new pipeline with everything in effect now: the prompt, filter, embeddings and noise."""
        self._finish_transitions()
        prompt = self.preset.prompt
        if models is self.models:
            pipeline.set_embeddings(self.pipeline.cond, self.pipeline.uncond)
        pipeline.set_guidance(prompt.guidance, prompt.delta)
        pipeline.set_filter(self.preset.filter, seed=prompt.seed)
        set_noise_cut(self.noise_source, pipeline)
        preset = self.preset.model_copy(deep=True)
        preset.model, preset.stream = rebuild.target.model, rebuild.target.stream
        if models is not self.models:
            self._switch_encoder(models, rebuild)
        self._install(models, pipeline)
        self.preset = preset
        self._collected = self._collected[-pipeline.frames :]

    def _switch_encoder(self, models: Models, rebuild: Rebuild) -> None:
        """Another model: its own encoder. Prompts still being encoded are encoded again with it, and so is a
        prompt that changed while the new model loaded (the build encoded the one in effect when it started)."""
        self.encoder.close()
        self.encoder = PromptEncoder(models.encode_prompt)
        for key in ("cond", "uncond"):
            pending = self._pending.get(key)
            if pending is not None:
                pending.seq = self.encoder.request(key, prompt_texts(pending.source))
            elif self.prompts[key] is not rebuild.prompts[key]:
                source = self.prompts[key]
                seq = self.encoder.request(key, prompt_texts(source))
                self._pending[key] = _PendingPrompt(source, seq, announce=False)


def _pairs(what: str, items: Sequence[tuple[Any, float]]) -> list[tuple[Any, float]]:
    """A blend's (thing, weight) pairs; a DreamwireError naming the items if they are not pairs, or none."""
    try:
        pairs = [(thing, weight) for thing, weight in items]
    except (TypeError, ValueError):
        raise DreamwireError(f"{what} items {items!r} must be (value, weight) pairs") from None
    if not pairs:
        raise DreamwireError(f"{what} needs at least one (value, weight) pair")
    return pairs


def _shown(value: Any, limit: int = 120) -> str:
    """A value for a one-line message, shortened."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _one_line(error: BaseException) -> str:
    """An exception as one line: the message alone for ours, with the type for anything else."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if isinstance(error, DreamwireError) else f"{type(error).__name__}: {text}"
