"""Applying requests on the engine thread, between two frames: one handler per schema `apply` name, plus pause
and reset, and the transitions they start.

A value goes into the pipeline at once (a cut) or over its duration (a transition advanced once per frame); a
prompt goes to the encoder (engine/live/prompts.py); a change of shape to a rebuild (engine/live/rebuild.py).
Each request ends in exactly one EngineEvent; a failure is one log line and an error event, never the end of
the loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError

from engine.config import paths
from engine.config.processors import item_path
from engine.core.errors import DreamwireError
from engine.live.controls import BlendPrompts, BlendSeeds, Control, Pause, Reset, SetValue, spec_of
from engine.live.events import one_line
from engine.live.in_effect import InEffect
from engine.live.io_bridges import IoBridges
from engine.live.prompts import Prompts
from engine.live.rebuild import Rebuilds
from engine.live.targets import MORPHS, NoiseSource, noise_of, set_noise_cut

log = logging.getLogger(__name__)


class Changes:
    """The engine thread's side of the requests; see the module docstring."""

    def __init__(
        self, now: InEffect, prompts: Prompts, rebuilds: Rebuilds, io: IoBridges, forget_captures: Callable[[], None]
    ) -> None:
        self._now, self._prompts, self._rebuilds, self._io = now, prompts, rebuilds, io
        self._forget_captures = forget_captures  # after a reset: the frames in the pipeline are gone
        self.handlers: dict[str, Callable[[SetValue], None]] = {  # one per schema `apply` name
            "cond": prompts.request,
            "uncond": prompts.request,
            "guidance": self._set_number,
            "delta": self._set_number,
            "noise": self._set_noise,
            "schedule": self._set_schedule,
            "filter": self._set_filter,
            "source": self._set_source,
            "sinks": self._set_sinks,
            "controlnet": self._set_controlnet,
            "processor": self._set_processor,
            "feature_bank": self._set_feature_bank,
            "lora": self._set_lora,
            "ip_adapter": self._set_number,  # ip_adapter.scale: its device scalar
            "rebuild": rebuilds.request,
        }

    def apply_guarded(self, control: Control) -> None:
        try:
            self.apply(control)
        except Exception as error:  # checked when sent; whatever still fails is one line, never the end of the loop
            log.debug("applying %s failed", control, exc_info=error)
            self._now.events.refused(control, one_line(error))

    def apply(self, control: Control) -> None:
        match control:
            case SetValue():
                self.handlers[spec_of(control.path).apply](control)
            case BlendPrompts():
                self._prompts.request(control)
            case BlendSeeds():
                self._set_noise(control)
            case Pause(paused):
                self._now.paused = paused
                log.info("paused" if paused else "resumed")
                self._now.events.applied(control, paused)
            case Reset():
                self._reset(control)

    def modulate(self, values: Sequence[tuple[str, Any]]) -> list[tuple[str, str]]:
        """LFO values (engine/live/modulators.py) into the pipeline, through each parameter's handler as a change
        of it would go, but neither stored nor reported. The handlers read the other fields of a section from a
        view of the preset holding every LFO value of this frame, so two LFOs on one section (controlnets.0.start
        and end) both land. (path, why) for each value that failed; a value the schema refuses with this frame's
        others (start past end) waits for the next frame."""
        now = self._now
        base, view = now.preset, now.preset.model_copy()  # shallow: paths.store copies what it changes
        failed: list[tuple[str, str]] = []
        landed: list[tuple[str, Any]] = []
        for path, value in values:
            try:
                paths.store(view, path, value)
            except ValidationError:
                continue
            except DreamwireError as error:
                failed.append((path, one_line(error)))
                continue
            landed.append((path, value))
        now.preset = view
        try:
            for path, value in landed:
                try:
                    self.handlers[spec_of(path).apply](SetValue(path, value, modulated=True))
                except Exception as error:  # one LFO's failure is its own: the others still land
                    failed.append((path, one_line(error)))
        finally:
            now.preset = base
        return failed

    def _set_number(self, control: SetValue) -> None:
        """A number a transition can move, at once or over the duration: guidance, delta (by their apply name), a
        processor's number, a LoRA's weight, the IP-Adapter's scale (by path: engine/live/targets.py MORPHS)."""
        now = self._now
        key = control.path if control.path in MORPHS else spec_of(control.path).apply
        now.move(key, float(control.value), control)
        now.store(control)
        now.events.applied(control, control.value)

    def _set_noise(self, control: NoiseSource) -> None:
        """prompt.seed or seed.blend: the fixed noise, at once or over the duration (slerp)."""
        now = self._now
        if control.duration.is_cut:
            now.transitions.cancel("noise")
            set_noise_cut(control, now.pipeline)
        else:
            now.move("noise", noise_of(control, now.pipeline), control)
        now.noise_source = control
        if isinstance(control, SetValue):
            now.store(control)
        now.events.applied(control, control.value)

    def _set_schedule(self, control: SetValue) -> None:
        """t_index_list, num_inference_steps: new tables for the same number of slots; buffers and noise kept."""
        now = self._now
        stream = now.preset.stream.model_copy()
        setattr(stream, control.path.split(".")[1], control.value)
        if len(stream.t_index_list) != now.pipeline.slots:
            self._rebuilds.request(control)  # another number of slots: new buffer shapes
            return
        now.pipeline.set_schedule(stream.t_index_list, stream.num_inference_steps)
        now.store(control)
        now.events.applied(control, control.value)

    def _set_filter(self, control: SetValue) -> None:
        now = self._now
        config = now.preset.filter.model_copy()
        setattr(config, control.path.split(".")[1], control.value)
        now.pipeline.set_filter(config, seed=now.preset.prompt.seed)
        now.store(control)
        now.events.applied(control, control.value)

    def _set_controlnet(self, control: SetValue) -> None:
        """controlnets.<i>.scale, enabled, start, end, thresholds: written into the running ControlNet in place."""
        now = self._now
        if control.path in MORPHS:  # the scale: at once or over the duration, like guidance
            now.move(control.path, float(control.value), control)
        else:
            index = int(paths.parts(control.path)[1])  # type: ignore[arg-type]  # controlnets.<i>.<field>
            _, entries, _ = paths.assigned(now.preset, control.path, control.value)
            running = now.pipeline.controlnets.units[index].config  # type: ignore[union-attr]
            # the scale as it is now (a transition may be moving it), the other fields as requested
            now.pipeline.set_controlnet(index, entries[index].model_copy(update={"scale": running.scale}))
        now.store(control)
        now.events.applied(control, control.value)

    def _set_processor(self, control: SetValue) -> None:
        """processors.<stage>.<i>.enabled or .<param>: into the running processor, in place; a number at once or
        over the duration."""
        if control.path in MORPHS:
            self._set_number(control)
            return
        now = self._now
        now.pipeline.set_processor(*item_path(control.path), control.value)
        now.store(control)
        now.events.applied(control, control.value)

    def _set_feature_bank(self, control: SetValue) -> None:
        """feature_bank.*: the live numbers in place; enabled or max_frames make the rings anew and re-capture the
        step (engine/pipeline/feature_bank.py): never a model reload, and a rebuild only under TensorRT."""
        now = self._now
        _, config, _ = paths.assigned(now.preset, control.path, control.value)
        if now.pipeline.feature_bank_needs_rebuild(config):  # TensorRT: the ring size is the engine's
            self._rebuilds.request(control)
            return
        now.pipeline.set_feature_bank(config)
        now.store(control)
        now.events.applied(control, control.value)

    def _set_lora(self, control: SetValue) -> None:
        """loras.<i>.weight: written into the adapter's device scalar (at once or over the duration); a fused
        LoRA's weight is baked into the UNet, so its change is a rebuild."""
        now = self._now
        index = int(paths.parts(control.path)[1])  # type: ignore[arg-type]  # loras.<i>.weight
        if now.preset.loras[index].fuse:
            if control.modulated:  # an LFO would rebuild every frame
                raise DreamwireError(f"LFO on {control.path}: the LoRA is fused (fuse: true bakes its weight in)")
            self._rebuilds.request(control)
            return
        self._set_number(control)

    def _set_source(self, control: SetValue) -> None:
        self._io.swap_source(control.bridges[0], control.value)
        self._now.store(control)
        self._now.events.applied(control, control.value)

    def _set_sinks(self, control: SetValue) -> None:
        self._io.swap_sinks(list(control.bridges), control.value)
        self._now.store(control)
        self._now.events.applied(control, control.value)

    def _reset(self, control: Reset) -> None:
        """Re-prepare with everything in effect: empty buffers and the noise afresh; embeddings kept."""
        now = self._now
        now.finish_transitions()
        pipeline = now.pipeline
        pipeline.prepare(now.preset.prompt, now.preset.filter, (pipeline.cond, pipeline.uncond))
        set_noise_cut(now.noise_source, pipeline)
        self._forget_captures()
        log.info("reset: fresh noise and empty buffers")
        now.events.applied(control)
