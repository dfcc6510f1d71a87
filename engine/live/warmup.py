"""No brown warm-up frames in live mode.

After a prepare (the start, a rebuild, a reset) Stream Batch's latent buffer is all zeros, so its first n − 1
outputs (n = len(t_index_list)) are decodes of a zero latent: a brown or grey flash. The live engine sends the last
good frame instead (the input frame at start, the frame that was showing before a reset or a rebuild) until the
first real output. `dreamwire render` keeps the reference's frame-exact order and does not use this.

A step skipped by the similarity filter repeats the pipeline's last output, which during the warm-up is a zero
decode too: it is held as well. Held frames keep the index and capture time of the output they stand for.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.core.frames import Frame


class WarmupHold:
    """Counts the model steps since the last prepare and swaps warm-up outputs for held frames."""

    def __init__(self) -> None:
        self._left = 0  # model steps whose output still comes from the zero buffer
        self._real = True  # whether the pipeline has produced a real output since the last prepare

    def restart(self, warmup_steps: int) -> None:
        """After a prepare: the next `warmup_steps` model steps (n − 1 under Stream Batch, else 0) are held."""
        self._left, self._real = warmup_steps, warmup_steps == 0

    @property
    def holding(self) -> bool:
        return not self._real

    def outputs(
        self, outputs: list[Frame], inputs: Sequence[Frame], held: Sequence[Frame], skipped: bool
    ) -> list[Frame]:
        """The frames to send for one step: `outputs` once they are real, else `held` (the last frames sent; the
        step's `inputs` when nothing was sent yet), stamped as the outputs they replace."""
        if self._real:
            return outputs
        if not skipped:
            if self._left == 0:
                self._real = True
                return outputs
            self._left -= 1
        shown = held or inputs
        return [
            Frame(shown[min(i, len(shown) - 1)].image, frame.index, frame.capture_time)
            for i, frame in enumerate(outputs)
        ]


def warmup_steps(slots: int, use_denoising_batch: bool) -> int:
    """Outputs that come from the zero buffer after a prepare: n − 1 under Stream Batch (none step by step)."""
    return slots - 1 if use_denoising_batch else 0
