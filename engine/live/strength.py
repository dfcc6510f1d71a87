"""img2img strength ↔ t_index_list: the one number a fader moves, mapped onto the schedule the engine runs.

Strength is the engine's concept (how much of the input survives), so it lives here; every controller (OSC,
the control page, MIDI) reaches it through the control surface's `/strength` command.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.core.errors import DreamwireError


def strength_to_t_index_list(strength: float, steps: int, num_inference_steps: int) -> list[int]:
    """img2img strength s ∈ [0, 1] → `steps` ascending indices into the LCM schedule of N = num_inference_steps:
    first = round((1 − s)·(N − steps)), then evenly to the end: t_i = first + ⌊i·(N − first)/steps⌋.
    s = 1 starts at index 0 (pure noise: the input barely shows), s = 0 at N − steps (the input almost as is).
    The number of steps is kept, so the change is live (no rebuild)."""
    if not 0.0 <= strength <= 1.0:
        raise DreamwireError(f"strength {strength!r} is out of range [0, 1]")
    if steps > num_inference_steps:
        raise DreamwireError(f"strength: {steps} steps do not fit a schedule of {num_inference_steps}")
    first = round((1.0 - strength) * (num_inference_steps - steps))
    return [first + (i * (num_inference_steps - first)) // steps for i in range(steps)]


def t_index_list_to_strength(t_index_list: Sequence[int], num_inference_steps: int) -> float:
    """The inverse of strength_to_t_index_list on the first index: 1 − first/(N − steps)."""
    room = num_inference_steps - len(t_index_list)
    return 1.0 if room <= 0 else max(0.0, min(1.0, 1.0 - t_index_list[0] / room))
