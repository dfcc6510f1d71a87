"""Registry paths on a Preset: `section.field`, a whole list section (`controlnets`) or a field of one of its
entries (`controlnets.0.scale`). Reading, and assigning through the schema's validation without touching the
preset it was given, for the live engine (its requested and in-effect values) and the control surface."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from engine.config.schema import Preset
from engine.core.errors import DreamwireError


def parts(path: str) -> tuple[str, int | None, str | None]:
    """'prompt.guidance' → ('prompt', None, 'guidance'); 'controlnets.0.scale' → ('controlnets', 0, 'scale');
    'controlnets' → ('controlnets', None, None)."""
    top, *rest = path.split(".")
    if not rest:
        return top, None, None
    if len(rest) == 1:
        return top, None, rest[0]
    return top, int(rest[0]), rest[1]


def read(preset: Preset, path: str) -> Any:
    """The value at `path`; DreamwireError when the list entry does not exist."""
    top, index, name = parts(path)
    node = getattr(preset, top)
    if index is not None:
        node = entry(node, top, index)
    return node if name is None else getattr(node, name)


def entry(items: list[Any], top: str, index: int) -> Any:
    if index >= len(items):
        raise DreamwireError(
            f"{top}.{index}: there is no such entry (the preset has {len(items)}; adding one sets the whole "
            f"`{top}` list, a rebuild)"
        )
    return items[index]


def assigned(preset: Preset, path: str, value: Any) -> tuple[str, Any, Any]:
    """(top-level name, its new value, `value` as the schema coerced it) for `preset` with `value` at `path`,
    validated (a pydantic ValidationError when refused; `preset` itself is never changed). The new value shares
    nothing that the old one is still using: the section, or the list and the changed entry, are copies."""
    top, index, name = parts(path)
    if name is None:  # the whole list: validated on a shallow copy of the preset
        holder = preset.model_copy()
        setattr(holder, top, value)
        new = getattr(holder, top)
        return top, new, new
    if index is None:
        section = getattr(preset, top).model_copy()
        setattr(section, name, value)
        return top, section, getattr(section, name)
    items = list(getattr(preset, top))
    item: BaseModel = entry(items, top, index).model_copy()
    setattr(item, name, value)
    items[index] = item
    return top, items, getattr(item, name)


def store(preset: Preset, path: str, value: Any) -> None:
    """Set the value at `path` in `preset` (validated; copies as in assigned())."""
    top, new, _ = assigned(preset, path, value)
    setattr(preset, top, new)


def prefix(path: str) -> str:
    """What pydantic's error locations are relative to when `path` is validated alone (see assigned())."""
    top, index, name = parts(path)
    if name is None:
        return ""
    return top if index is None else f"{top}.{index}"
