"""The prompt lifecycle: a prompt change is encoded off the engine thread (engine/live/prompt_encoder.py) and
swapped in when its embedding is ready, the newest request per embedding winning; the old prompt keeps rendering
meanwhile.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from engine.core.errors import DreamwireError
from engine.live.controls import BlendPrompts, SetValue, spec_of
from engine.live.events import one_line
from engine.live.in_effect import InEffect
from engine.live.prompt_encoder import EncodeFailure, EncodeResult, PromptEncoder
from engine.live.targets import MORPHS, PromptSource, combine_prompt, prompt_texts
from engine.pipeline.models import Models

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    source: PromptSource  # the request: prompt.text / prompt.negative, or prompt.blend
    seq: int  # the encoder's number for it: a result with another number is for an older request
    announce: bool = True  # False: an encoding again for another model, of a change already reported


class Prompts:
    """One engine's prompt state; its methods run on the engine thread."""

    def __init__(self, now: InEffect) -> None:
        self._now = now
        self.encoder = PromptEncoder(now.models.encode_prompt)
        self._pending: dict[str, _Pending] = {}  # "cond" / "uncond" -> the newest request being encoded

    def encoding(self, key: str | None = None) -> bool:
        """A request for this embedding ("cond", "uncond"; None: either) is being encoded."""
        return bool(self._pending) if key is None else key in self._pending

    def request(self, control: PromptSource) -> None:
        """prompt.text / prompt.negative / prompt.blend: encoded off this thread; the old prompt keeps rendering
        until the embedding is ready."""
        key = "cond" if isinstance(control, BlendPrompts) else spec_of(control.path).apply
        previous = self._pending.pop(key, None)
        if previous is not None:
            why = f"superseded by request {control.request_id} before it was encoded"
            self._now.events.superseded(previous.source, why)
        self._pending[key] = _Pending(control, self.encoder.request(key, prompt_texts(control)))

    def poll(self) -> None:
        """Swap in what the encoder finished."""
        for result in self.encoder.poll():
            self._on_encoded(result)

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
            self._now.events.refused(pending.source, one_line(error))

    def _swap_in(self, key: str, pending: _Pending, result: EncodeResult | EncodeFailure) -> None:
        """The newest request's encoding: its embedding goes in (at once or over its duration)."""
        now, source = self._now, pending.source
        if isinstance(result, EncodeFailure):  # (for another model's encoding: the build's encoding stays)
            raise DreamwireError(f"{result.text!r} could not be encoded ({result.message}); the prompt is unchanged")
        target = combine_prompt(source, result.embeddings).to(now.models.device, now.models.dtype)
        current = MORPHS[key].get(now.pipeline)
        if target.shape != current.shape:
            raise DreamwireError(f"the encoder gave shape {tuple(target.shape)}, not {tuple(current.shape)}")
        now.move(key, target, source)
        now.prompts[key] = source
        if isinstance(source, SetValue):
            now.store(source)
        if pending.announce:
            now.events.applied(source, source.value)

    def switch_model(self, models: Models, built_from: dict[str, PromptSource]) -> None:
        """Another model: its own encoder. Prompts still being encoded are encoded again with it, and so is a
        prompt that changed while the new model loaded (the build encoded the one in effect when it started)."""
        self.encoder.close()
        self.encoder = PromptEncoder(models.encode_prompt)
        for key in ("cond", "uncond"):
            pending = self._pending.get(key)
            if pending is not None:
                pending.seq = self.encoder.request(key, prompt_texts(pending.source))
            elif self._now.prompts[key] is not built_from[key]:
                source = self._now.prompts[key]
                seq = self.encoder.request(key, prompt_texts(source))
                self._pending[key] = _Pending(source, seq, announce=False)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the encoder, waiting up to `timeout` s for an encoding under way."""
        self.encoder.close(timeout)
