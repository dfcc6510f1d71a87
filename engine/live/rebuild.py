"""Pipeline rebuilds in the background: what a rebuild builds, which requests it carries, the build itself, and
its lifecycle on the engine thread (Rebuilds).

The engine keeps at most one Rebuild. A change that needs one while another is building starts a newer one that
carries the older's requests (the newest per path); the older build's result is dropped when it arrives. Only the
model and the stream settings come from the rebuild's target: the prompt, the filter, the embeddings and the
noise are the ones in effect when the new pipeline is installed (engine/live/loop.py), so nothing sent during
the build is lost.

The build runs on a supervised daemon thread (engine/core/supervisor.py) with one intra-op thread, so it never
competes with the engine's team. Stopping never waits for it: a model load or a compile that cannot be
interrupted is abandoned, and the process exits anyway. Controls that change the pipeline wait in the control
queue while a rebuild runs and are applied to the new pipeline (the old pipeline's frame is held meanwhile).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.config import paths
from engine.config.schema import Preset
from engine.core.errors import DreamwireError
from engine.core.supervisor import SupervisedThread, spawn
from engine.live.controls import Control, Pause, RequestedValues, SetValue, spec_of
from engine.live.events import EngineEvent, one_line
from engine.live.in_effect import InEffect
from engine.live.prompts import Prompts
from engine.live.targets import PromptSource, encode_prompt, set_noise_cut
from engine.live.threads import limit_torch_threads
from engine.pipeline.models import Models, load_models
from engine.pipeline.stream import StreamPipeline, styles_fit

log = logging.getLogger(__name__)

# Controls that go ahead of a running rebuild: io changes, pause and rebuilds themselves (a newer one replaces it).
_GOES_AHEAD_OF_A_REBUILD = frozenset({"source", "sinks", "rebuild"})


@dataclass
class Rebuild:
    target: Preset  # model and stream to build (its prompt and filter sections are not used)
    requests: dict[str, SetValue]  # path -> the newest request this rebuild applies
    future: Future[tuple[Models, StreamPipeline]]
    prompts: dict[str, PromptSource] = field(default_factory=dict)  # cond/uncond sources the build encoded


def build_pipeline(
    models: Models | None,
    target: Preset,
    prompts: dict[str, PromptSource],
    embeddings: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[Models, StreamPipeline]:
    """On the rebuild thread: the models (loaded when `models` is None, i.e. the model changed) and a pipeline
    prepared with the embeddings in effect (encoded afresh for another model from `prompts`)."""
    if models is None:
        models = load_models(target.model)
        uncond = models.encode_prompt(prompts["uncond"].value)
        embeddings = (encode_prompt(prompts["cond"], models.encode_prompt), uncond)
    pipeline = StreamPipeline.prepared(
        models,
        target.stream,
        target.prompt,
        target.filter,
        embeddings,
        controlnets=target.controlnets,
        processors=target.processors,
        feature_bank=target.feature_bank,
        loras=target.loras,
        ip_adapter=target.ip_adapter,
    )
    return models, pipeline


class Rebuilds:
    """The engine's rebuilds: at most one running; its methods but submit() run on the engine thread."""

    def __init__(
        self,
        now: InEffect,
        requested: RequestedValues,
        prompts: Prompts,
        install: Callable[[Models, StreamPipeline], None],
    ) -> None:
        self._now, self._requested, self._prompts = now, requested, prompts
        self._install = install  # runs a new pipeline from the next step on
        self.running: Rebuild | None = None
        self._jobs: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], Future[Any]] | None]
        self._jobs = queue.SimpleQueue()
        self._thread: SupervisedThread | None = None  # started with the first job

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run fn(*args) on the rebuild thread; a cancelled future that has not started never runs."""
        future: Future[Any] = Future()
        self._jobs.put((fn, args, future))
        if self._thread is None:
            self._thread = spawn("dreamwire-rebuild", self._work)
        return future

    def _work(self, stop: threading.Event) -> None:
        limit_torch_threads(1)
        while not stop.is_set():
            job = self._jobs.get()
            if job is None:
                return
            fn, args, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except Exception as error:  # the build's failure is the future's, reported on the engine thread
                future.set_exception(error)
            else:
                future.set_result(result)

    def waits(self, control: Control) -> bool:
        """This control waits in the queue until the running rebuild is installed."""
        if self.running is None:
            return False
        if isinstance(control, SetValue):
            return spec_of(control.path).apply not in _GOES_AHEAD_OF_A_REBUILD
        return not isinstance(control, Pause)

    def request(self, control: SetValue) -> None:
        """Build a pipeline with this change (and those of a rebuild still building) in the background."""
        now, running = self._now, self.running
        target = (running.target if running is not None else now.preset).model_copy(deep=True)
        paths.store(target, control.path, control.value)  # validated again: a bad value is refused here
        target.prompt, target.filter = now.preset.prompt.model_copy(), now.preset.filter.model_copy()
        requests = dict(running.requests) if running is not None else {}
        older = requests.pop(control.path, None)
        if older is not None:
            now.events.superseded(older, f"superseded by request {control.request_id} before the rebuild finished")
        requests[control.path] = control
        if running is not None:
            running.future.cancel()  # not started yet: never runs; already building: its result is dropped
        # Other LoRAs or another IP-Adapter change the UNet the running pipeline uses: those load the model afresh.
        same_models = target.model == now.preset.model and styles_fit(now.models, target)
        embeddings = (now.effective("cond"), now.effective("uncond")) if same_models else None
        prompts = dict(now.prompts)
        models = now.models if same_models else None  # None: the rebuild thread loads the new ones
        future = self.submit(build_pipeline, models, target, prompts, embeddings)
        self.running = Rebuild(target, requests, future, prompts)
        log.info("%s changed: rebuilding the pipeline (the last frame is held meanwhile)", control.path)

    def poll(self) -> None:
        """Install a finished rebuild, or report its failure (the running pipeline stays)."""
        rebuild = self.running
        if rebuild is None or not rebuild.future.done():
            return
        self.running = None
        now = self._now
        try:
            models, pipeline = rebuild.future.result()
            self._switch_pipeline(models, pipeline, rebuild)
        except Exception as error:  # a failed rebuild must never end the show: keep what runs
            log.debug("rebuild failed", exc_info=error)
            why = f"rebuild failed, keeping the running pipeline: {one_line(error)}"
            for control in rebuild.requests.values():
                now.events.refused(control, why)
                try:
                    value = paths.read(now.preset, control.path)
                except DreamwireError:  # an entry that is not in effect: the requested list is kept
                    continue
                self._requested.revert(control.path, value, control.request_id)
            log.error("%s", why)
            now.events.emit(EngineEvent("error", "rebuild", message=why))
        else:
            for control in rebuild.requests.values():
                now.events.applied(control, control.value)
            now.events.emit(EngineEvent("applied", "rebuild", value=now.preset.model_copy(deep=True)))
            stream = now.preset.stream
            log.info(
                "rebuild done: %dx%d, cfg %s, %d steps",
                stream.width,
                stream.height,
                stream.cfg_type,
                len(stream.t_index_list),
            )

    def _switch_pipeline(self, models: Models, pipeline: StreamPipeline, rebuild: Rebuild) -> None:
        """Install the new pipeline with everything in effect now: the prompt, filter, embeddings and noise."""
        now = self._now
        now.finish_transitions()
        prompt = now.preset.prompt
        if models is now.models:
            pipeline.set_embeddings(now.pipeline.cond, now.pipeline.uncond)
        pipeline.set_guidance(prompt.guidance, prompt.delta)
        pipeline.set_filter(now.preset.filter, seed=prompt.seed)
        set_noise_cut(now.noise_source, pipeline)
        preset = now.preset.model_copy(deep=True)
        preset.model, preset.stream = rebuild.target.model, rebuild.target.stream
        preset.controlnets = rebuild.target.controlnets
        preset.processors = rebuild.target.processors
        preset.feature_bank = rebuild.target.feature_bank  # under TensorRT its ring size is a rebuild
        preset.loras, preset.ip_adapter = rebuild.target.loras, rebuild.target.ip_adapter
        if models is not now.models:
            self._prompts.switch_model(models, rebuild.prompts)
        self._install(models, pipeline)
        now.preset = preset

    def close(self) -> None:
        """Never waits for a build: the thread is a daemon, abandoned if it is still building."""
        if self.running is not None:
            self.running.future.cancel()
        self._jobs.put(None)
        if self._thread is not None:
            self._thread.stop(timeout=0)
