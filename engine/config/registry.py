"""The parameter registry: one table (name, type, range or choices, default, doc, live or rebuild, apply handler),
read off the preset schema in engine/config/schema.py. Presets, the control surface (engine/control/: its
addresses, OSCQuery; its commands are a table of its own), errors, the live engine's apply handlers and the
README table all come from here."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from engine.config.schema import Preset


@dataclass(frozen=True)
class ParamSpec:
    path: str  # dotted, e.g. "prompt.guidance"; the OSC address is "/" + path with "/" for "."
    kind: str  # "int", "float", "bool", "str", "enum", "list[int]", "list[str]", "str|null"
    default: Any
    doc: str
    live: bool
    apply: str  # the live engine's handler for a change (schema.Apply): "guidance", "schedule", "rebuild", ...
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    startup: bool = False  # read once when `dreamwire run` starts (osc.*): neither live nor a rebuild
    item: str = ""  # a field of a list entry: its path with "<i>" for the index, e.g. "controlnets.<i>.scale"

    @property
    def when(self) -> str:
        """When a change takes effect: 'live', 'rebuild' or 'at start'."""
        return "at start" if self.startup else "live" if self.live else "rebuild"

    def allowed(self) -> str:
        """The allowed values, for error messages and docs."""
        if self.choices:
            return ", ".join(self.choices)
        if self.minimum is not None or self.maximum is not None:
            return f"{self.kind} in [{_num(self.minimum)}, {_num(self.maximum)}]"
        return self.kind


def _num(value: float | None) -> str:
    if value is None:
        return "…"
    return str(int(value)) if float(value).is_integer() else str(value)


def _kind(annotation: Any) -> tuple[str, tuple[str, ...]]:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "enum", tuple(str(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return f"{_kind(inner[0])[0]}|null", ()
    if origin is list:
        return f"list[{_kind(typing.get_args(annotation)[0])[0]}]", ()
    return getattr(annotation, "__name__", str(annotation)), ()


def _bounds(field: Any) -> tuple[float | None, float | None]:
    low = high = None
    for item in field.metadata:
        low = getattr(item, "ge", None) if getattr(item, "ge", None) is not None else low
        high = getattr(item, "le", None) if getattr(item, "le", None) is not None else high
    return low, high


def _spec(path: str, field: FieldInfo, item: str = "") -> ParamSpec:
    kind, choices = _kind(field.annotation)
    low, high = _bounds(field)
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    default = None if field.is_required() else field.get_default(call_default_factory=True)
    return ParamSpec(
        path=path,
        kind=kind,
        default=default,
        doc=field.description or "",
        live=bool(extra.get("live", False)),
        apply=str(extra.get("apply", "rebuild")),
        minimum=low,
        maximum=high,
        choices=choices,
        startup=bool(extra.get("startup", False)),
        item=item,
    )


def list_section(field: FieldInfo) -> tuple[type[BaseModel], int] | None:
    """(entry model, most entries) of an indexed list of entries such as `controlnets`; None otherwise."""
    if typing.get_origin(field.annotation) is not list:
        return None
    (entry,) = typing.get_args(field.annotation)
    if not (isinstance(entry, type) and issubclass(entry, BaseModel)):
        return None  # a list of values (t_index_list), not of entries
    most = next((m.max_length for m in field.metadata if getattr(m, "max_length", None) is not None), None)
    if most is None:
        raise AssertionError("a list section needs a max_length: its registry paths are made for each index")
    return entry, most


@cache
def registry() -> dict[str, ParamSpec]:
    """path → spec. A section's fields are `section.field`; an indexed list (a section such as `controlnets`, or a
    section's field such as `processors.image_pre`) is the whole list under its own path (a rebuild) plus
    `<list>.<i>.<field>` for every index it may have."""
    specs: dict[str, ParamSpec] = {}
    for section_name, section_field in Preset.model_fields.items():
        listed = list_section(section_field)
        if listed is not None:
            _add_list(specs, section_name, section_field, *listed)
            continue
        section: type[BaseModel] = section_field.annotation  # type: ignore[assignment]
        for name, field in section.model_fields.items():
            nested = list_section(field)
            if nested is not None:
                _add_list(specs, f"{section_name}.{name}", field, *nested)
            else:
                specs[f"{section_name}.{name}"] = _spec(f"{section_name}.{name}", field)
    return specs


def _add_list(specs: dict[str, ParamSpec], path: str, field: FieldInfo, entry: type[BaseModel], most: int) -> None:
    whole = _spec(path, field)
    specs[path] = dataclasses.replace(whole, kind=f"list[{entry.__name__}]")
    for index in range(most):
        for name, item_field in item_fields(entry).items():
            specs[f"{path}.{index}.{name}"] = _spec(f"{path}.{index}.{name}", item_field, item=f"{path}.<i>.{name}")


def item_fields(entry: type[BaseModel]) -> dict[str, FieldInfo]:
    """The fields of a list entry that have registry paths: its own, or those it names (a processor: `enabled`
    and its types' params, engine/config/processors.py)."""
    custom = getattr(entry, "item_fields", None)
    return custom() if custom is not None else dict(entry.model_fields)


def documented() -> list[ParamSpec]:
    """The registry with one row per field of a list section (`controlnets.<i>.scale`), for the docs."""
    rows: dict[str, ParamSpec] = {}
    for spec in registry().values():
        rows.setdefault(spec.item or spec.path, dataclasses.replace(spec, path=spec.item or spec.path))
    return list(rows.values())


def markdown_table() -> str:
    """The README's parameter table."""
    rows = ["| parameter | type / allowed | default | live | description |", "|---|---|---|---|---|"]
    for spec in documented():
        allowed = spec.allowed().replace("|", "\\|")  # "str|null" inside a table cell
        default = "required" if spec.default is None and spec.kind == "str" else f"`{spec.default!r}`"
        rows.append(f"| `{spec.path}` | {allowed} | {default} | {spec.when} | {spec.doc} |")
    return "\n".join(rows)
