"""The no-silent-fallback rule, in one place.

When an accelerated path that the preset asked for fails (a TensorRT build, a torch.compile, a CUDA graph
capture), the run stops with one DreamwireError naming what failed (the CLI makes it exit code 2). Only where
the preset says `stream.acceleration_fallback: none` does it carry on with eager PyTorch instead, and then it
says so in a warning.
"""

from __future__ import annotations

import logging

from engine.core.errors import DreamwireError

log = logging.getLogger(__name__)


class Fallback:
    def __init__(self, to_eager: bool) -> None:
        self.to_eager = to_eager  # stream.acceleration_fallback == "none"

    def failed(self, what: str, error: BaseException) -> None:
        """Raise a DreamwireError naming `what` and the error, or (fallback allowed) log it as a warning."""
        text = str(error).strip()
        detail = text.splitlines()[0] if text else ""
        if not isinstance(error, DreamwireError):
            detail = f"{type(error).__name__}: {detail}" if detail else type(error).__name__
        if not self.to_eager:
            raise DreamwireError(
                f"{what} failed: {detail} (set stream.acceleration_fallback=none to run eager PyTorch instead)"
            ) from error
        log.warning("%s failed: %s; running eager PyTorch instead (stream.acceleration_fallback: none)", what, detail)
