"""Presets: a name in presets/ or a YAML path, plus `--set key=value` overrides, into a validated Preset."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from engine.config.registry import registry
from engine.config.schema import Preset
from engine.core.errors import DreamwireError


def available_presets() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in resources.files("presets").iterdir() if p.name.endswith(".yaml"))


def read_preset_file(name_or_path: str) -> dict[str, Any]:
    """The raw mapping of a preset given by name (presets/NAME.yaml) or by path."""
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise DreamwireError(f"preset file not found: {name_or_path!r}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise DreamwireError(f"preset file {name_or_path!r} cannot be read as UTF-8 text ({error})") from error
    else:
        packaged = resources.files("presets").joinpath(f"{name_or_path}.yaml")
        if not packaged.is_file():
            names = ", ".join(available_presets())
            raise DreamwireError(f"unknown preset {name_or_path!r} (available: {names}, or a path to a .yaml file)")
        text = packaged.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise DreamwireError(f"preset {name_or_path!r} is not valid YAML: {error}".replace("\n", " ")) from error
    if not isinstance(raw, dict):
        raise DreamwireError(f"preset {name_or_path!r} must be a mapping of sections, got {type(raw).__name__}")
    return raw


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """`stream.t_index_list=[10,25]` → raw["stream"]["t_index_list"] = [10, 25] (value parsed as YAML);
    `controlnets=[{model: DIR, preprocessor: canny}]` sets a whole list, `controlnets.0.scale=0.5` one entry's field."""
    key, sep, text = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise DreamwireError(f"--set {assignment!r}: expected key=value, e.g. prompt.seed=7")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as error:
        raise DreamwireError(f"--set {key}: value {text!r} is not a YAML scalar or list") from error
    *sections, name = key.split(".")
    node: Any = raw
    for position, section in enumerate(sections):
        if isinstance(node, list):
            node = _list_entry(node, key, section)
            continue
        indexed = [*sections, name][position + 1].isdigit()  # controlnets.0.scale: controlnets is a list
        child = node.setdefault(section, [] if indexed else {})
        if not isinstance(child, dict | list):
            raise DreamwireError(f"--set {key}: {section!r} is not a section")
        node = child
    if not isinstance(node, dict):
        raise DreamwireError(f"--set {key}: give an entry's field, e.g. controlnets.0.scale=0.5")
    node[name] = value


def _list_entry(items: list[Any], key: str, index: str) -> dict[str, Any]:
    if not index.isdigit() or int(index) >= len(items) or not isinstance(items[int(index)], dict):
        raise DreamwireError(f"--set {key}: no entry {index!r} in a list of {len(items)}")
    return items[int(index)]


def describe_validation_error(error: ValidationError, prefix: str = "") -> str:
    """pydantic's report → one line that names the key, the bad value and what is allowed.
    prefix: the section name when a single section was validated (a live change)."""
    specs = registry()
    messages = []
    for item in error.errors():
        path = ".".join(str(part) for part in (prefix, *item["loc"]) if part != "")
        if item["type"] == "extra_forbidden":
            section = path.rsplit(".", 1)[0] if "." in path else ""
            keys = (
                sorted(
                    p[len(section) + 1 :]
                    for p in specs
                    if p.startswith(section + ".") and "." not in p[len(section) + 1 :]
                )
                if section
                else sorted({p.split(".")[0] for p in specs})
            )
            messages.append(f"unknown key {path!r} (allowed: {', '.join(keys)})")
            continue
        reason = item["msg"].removeprefix("Value error, ")
        if item["type"] == "value_error" and path not in specs:
            messages.append(f"{path}: {reason}")  # a cross-field check; its message names key and value
            continue
        spec = specs.get(path) or next((s for p, s in specs.items() if path.startswith(p)), None)
        allowed = f" (allowed: {spec.allowed()})" if spec else ""
        messages.append(f"{spec.path if spec else path}: {item.get('input')!r} is not accepted: {reason}{allowed}")
    return "; ".join(messages)


def load_preset(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Preset:
    raw = read_preset_file(name_or_path)
    for assignment in overrides:
        apply_override(raw, assignment)
    try:
        return Preset.model_validate(raw)
    except ValidationError as error:
        raise DreamwireError(describe_validation_error(error)) from None
