"""Coercion: what TouchDesigner, Max, a browser or a MIDI mapping sends → the registry's types, and back.

Every transport hands its arguments here (a list of Python values: int, float, str, bool, None, bytes, nested
lists); the ranges and cross-field rules are the schema's business (engine.set validates once).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from engine.config.registry import ParamSpec
from engine.core.errors import DreamwireError

INT32_MAX = 2**31 - 1


def coerce(spec: ParamSpec, args: Sequence[Any]) -> Any:
    """The OSC arguments as a value of `spec`'s kind (ranges are the registry's business); DreamwireError
    naming the argument when they cannot be one."""
    kind = spec.kind
    if kind in ("str", "enum", "str|null"):
        if kind == "str|null" and len(args) == 1 and args[0] is None:
            return None
        return join_text(args)
    if kind.startswith("list["):
        item = kind[len("list[") : -1]
        if item not in SCALARS:  # a list section (controlnets): one JSON text, its entries as objects
            return json_list(join_text(args))
        return [scalar(item, value) for value in list_items(args, split=item != "str")]
    if len(args) != 1:
        raise DreamwireError(f"expects 1 argument ({spec.allowed()}), got {len(args)}")
    if kind.endswith("|null") and args[0] is None:
        return None
    return scalar(kind.removesuffix("|null"), args[0])


SCALARS = ("int", "float", "bool", "str", "enum")


def json_list(text: str) -> list[Any]:
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as error:
        raise DreamwireError(f"expects a JSON list, got {text!r} ({error.msg})") from None
    if not isinstance(parsed, list):
        raise DreamwireError(f"expects a JSON list, got {text!r}")
    return parsed


def join_text(args: Sequence[Any]) -> str:
    """Several arguments joined with spaces: Max's udpsend splits unquoted text into several strings."""
    if not args:
        raise DreamwireError("expects text, got no argument")
    if any(isinstance(arg, bytes | bytearray | list) or arg is None for arg in args):
        raise DreamwireError(f"expects text, got {[type_name(arg) for arg in args]}")
    return " ".join(_text(arg) for arg in args)


def _text(arg: Any) -> str:
    if isinstance(arg, float) and arg.is_integer():
        return str(int(arg))
    return str(arg)


def scalar(kind: str, value: Any) -> Any:
    if kind == "str":
        return join_text([value])
    if isinstance(value, str):
        value = _parse_text(kind, value)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float) and value in (0, 1):
            return bool(value)
        raise DreamwireError(f"expects 0 or 1 (or T/F), got {value!r}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DreamwireError(f"expects a number, got {type_name(value)} {value!r}")
    if not math.isfinite(value):
        raise DreamwireError(f"expects a finite number, got {value!r}")
    if kind == "int":
        if isinstance(value, float) and not value.is_integer():
            raise DreamwireError(f"expects a whole number, got {value!r}")
        return int(value)
    if kind == "float":
        return float(value)
    raise DreamwireError(f"cannot set a {kind} over OSC")


_WORDS = {"true": True, "false": False, "on": True, "off": False, "yes": True, "no": False}


def _parse_text(kind: str, text: str) -> Any:
    """A number or a truth value sent as text (TouchDesigner's OSC Out DAT sends strings)."""
    word = text.strip().lower()
    if kind == "bool" and word in _WORDS:
        return _WORDS[word]
    try:
        return int(word)
    except ValueError:
        pass
    try:
        return float(word)
    except ValueError:
        raise DreamwireError(f"expects a number, got the text {text!r}") from None


def list_items(args: Sequence[Any], split: bool = True) -> list[Any]:
    """A list sent as several arguments, an OSC array, or one string: JSON ('[16, 32]'), or with split (numbers)
    items separated by spaces or commas ('16 32', '16,32')."""
    if len(args) == 1 and isinstance(args[0], str):
        text = args[0].strip()
        if text.startswith("["):
            return json_list(text)
        return [item for item in re.split(r"[\s,]+", text) if item] if split else [text]
    items: list[Any] = []
    for arg in args:
        items.extend(arg if isinstance(arg, list) else [arg])
    if not items:
        raise DreamwireError("expects at least one value, got none")
    return items


def type_name(value: Any) -> str:
    return {bytes: "blob", bytearray: "blob", type(None): "nil", list: "array"}.get(type(value), type(value).__name__)


def osc_args(value: Any) -> list[Any]:
    """A registry value as OSC arguments: bools as 0/1 (TouchDesigner's OSC In CHOP reads numbers only),
    lists as one argument per item, None as nil."""
    if isinstance(value, bool):
        return [int(value)]
    if isinstance(value, list | tuple) and any(isinstance(element, BaseModel) for element in value):
        return [json.dumps([element.model_dump() for element in value])]  # a list section: one JSON text
    if isinstance(value, list | tuple):
        return [item for element in value for item in osc_args(element)]
    return [value]


def osc_type(spec: ParamSpec, value: Any = None) -> str:
    """The OSC type tag string of a parameter (a list: one tag per item of `value`, or 'i…' without one)."""
    item = {"int": "i", "float": "f", "bool": "i", "str": "s", "enum": "s"}
    kind = spec.kind.removesuffix("|null")
    if kind.startswith("list["):
        if kind[len("list[") : -1] not in item:
            return "s"  # a list section as one JSON text
        tag = item[kind[len("list[") : -1]]
        return tag * len(value) if isinstance(value, list) else tag + "…"
    if kind == "int" and spec.maximum is not None and spec.maximum > INT32_MAX:
        return "h"  # int64; an int32 'i' is accepted too
    return item[kind]
