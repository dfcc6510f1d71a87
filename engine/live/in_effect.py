"""What is in effect on the engine thread: the preset's values, the models and the pipeline, what the embeddings
and the noise are made of, and the transitions moving them. The engine's parts (changes.py, prompts.py,
rebuild.py) share one InEffect; only the engine thread touches it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from engine.config import paths
from engine.config.schema import Preset
from engine.live.controls import BlendPrompts, BlendSeeds, Control, SetValue
from engine.live.events import EventHub, one_line
from engine.live.targets import MORPHS, NoiseSource, PromptSource
from engine.live.transitions import TransitionSet, Value
from engine.pipeline.models import Models
from engine.pipeline.stream import StreamPipeline

log = logging.getLogger(__name__)


class InEffect:
    def __init__(self, preset: Preset, models: Models, events: EventHub) -> None:
        self.preset = preset.model_copy(deep=True)  # the values in effect
        self.models = models
        self.pipeline: StreamPipeline  # set by the engine's install()
        self.events = events
        self.paused = False
        self.frame_number = 0  # output frames produced
        self.transitions = TransitionSet()
        self.beat_now: Callable[[], float] = lambda: 0.0  # the beat clock's beat (the engine sets its own)
        self._moving: dict[str, Control] = {}  # transition name -> the request that started it
        # What the embeddings and the noise are made of: the last change applied to each (a text or a blend, a
        # seed or a seed blend). A fresh prepare with these and the preset gives the pipeline's tensors.
        self.prompts: dict[str, PromptSource] = {
            "cond": SetValue("prompt.text", preset.prompt.text),
            "uncond": SetValue("prompt.negative", preset.prompt.negative),
        }
        self.noise_source: NoiseSource = SetValue("prompt.seed", preset.prompt.seed)

    def store(self, control: SetValue) -> None:
        """The value is now in effect (an LFO's value is not: the base stays)."""
        if control.modulated:
            return
        paths.store(self.preset, control.path, control.value)

    def move(self, name: str, target: Value, control: SetValue | BlendPrompts | BlendSeeds) -> None:
        """Apply now (a cut), or start a transition that applies a value every frame until it reaches target."""
        morph, duration = MORPHS[name], control.duration
        if duration.is_cut:
            self.transitions.cancel(name)
            morph.set(self.pipeline, target)
        else:
            start = morph.get(self.pipeline)
            self.transitions.start(
                name, start, target, duration.seconds, duration.frames, interp=morph.interp, beats=duration.beats
            )
            self._moving[name] = control

    def effective(self, name: str) -> Value:
        """A morphing value as it will be when its transition (if any) ends."""
        running = self.transitions.target_of(name)
        return running if running is not None else MORPHS[name].get(self.pipeline)

    def finish_transitions(self) -> None:
        """Every running transition lands on its target now (before a reset or a rebuild: cuts anyway)."""
        for name, target in self.transitions.finish().items():
            MORPHS[name].set(self.pipeline, target)

    def advance_transitions(self) -> None:
        moving = self.transitions.advance(time.perf_counter(), self.frame_number, self.beat_now())
        for name, value in moving.items():
            try:
                MORPHS[name].set(self.pipeline, value)
            except Exception as error:  # stop this transition where it is; the others go on
                self.transitions.cancel(name)
                log.debug("transition %s failed", name, exc_info=error)
                self.events.refused(self._moving[name], f"its transition stopped: {one_line(error)}")
