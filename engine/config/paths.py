"""Registry paths on a Preset: `section.field`, a whole list (`controlnets`, `processors.image_pre`) or a field of
one of its entries (`controlnets.0.scale`, `processors.image_pre.0.zoom`: an entry may keep a field inside itself,
through item_value / with_item, as a processor keeps its params). Reading, and assigning through the schema's
validation without touching the preset it was given, for the live engine (its requested and in-effect values) and
the control surface."""

from __future__ import annotations

from typing import Any

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
    """The value at `path`; DreamwireError when the list entry (or an entry's field) does not exist."""
    node: Any = preset
    names = path.split(".")
    for position, name in enumerate(names):
        node = _child(node, name, ".".join(names[:position]))
    return node


def _child(node: Any, name: str, where: str) -> Any:
    if isinstance(node, list):
        return entry(node, where, int(name))
    if name in type(node).model_fields:
        return getattr(node, name)
    try:
        return node.item_value(name)  # a field kept inside the entry (a processor's params)
    except KeyError as error:
        raise DreamwireError(f"{where}.{name}: {error.args[0]}") from None


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
    nothing that the old one is still using: each section, list and entry on the way to `path` is a copy."""
    top, *rest = path.split(".")
    if not rest:  # the whole list: validated on a shallow copy of the preset
        holder = preset.model_copy()
        setattr(holder, top, value)
        new = getattr(holder, top)
        return top, new, new
    new, checked = _assigned(getattr(preset, top), rest, value, top)
    return top, new, checked


def _assigned(node: Any, names: list[str], value: Any, where: str) -> tuple[Any, Any]:
    """(a copy of `node` with `value` at `names` below it, the value as coerced)."""
    name, *rest = names
    if isinstance(node, list):
        items = list(node)
        index = int(name)
        items[index], checked = _assigned(entry(items, where, index), rest, value, f"{where}.{name}")
        return items, checked
    if rest:
        copy = node.model_copy()
        child, checked = _assigned(getattr(node, name), rest, value, f"{where}.{name}")
        setattr(copy, name, child)
        return copy, checked
    if name in type(node).model_fields:
        copy = node.model_copy()
        setattr(copy, name, value)
        return copy, getattr(copy, name)
    try:
        return node.with_item(name, value)  # a field kept inside the entry (a processor's params)
    except KeyError as error:
        raise DreamwireError(f"{where}.{name}: {error.args[0]}") from None


def store(preset: Preset, path: str, value: Any) -> None:
    """Set the value at `path` in `preset` (validated; copies as in assigned())."""
    top, new, _ = assigned(preset, path, value)
    setattr(preset, top, new)


def prefix(path: str) -> str:
    """What pydantic's error locations are relative to when `path` is validated alone (see assigned()): the
    section, list entry or preset that holds its last name."""
    return path.rpartition(".")[0]
