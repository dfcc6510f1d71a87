"""The OSCQuery nodes of a control surface, read off the registry, the command table and the status table:
{full address: attributes} with VALUE as it is now (bridges/oscquery.py serves them)."""

from __future__ import annotations

from typing import Any

from engine.config.registry import registry
from engine.control.coerce import osc_args, osc_type
from engine.control.commands import COMMANDS
from engine.control.messages import STATUS, status_args
from engine.control.routes import parameter_address
from engine.control.surface import ControlSurface
from engine.core.errors import DreamwireError


def oscquery_nodes(surface: ControlSurface) -> dict[str, dict[str, Any]]:
    """{full address: OSCQuery attributes} for every parameter, command and status value."""
    out = surface.router.out
    nodes: dict[str, dict[str, Any]] = {}
    for spec in registry().values():
        try:
            value = surface.value(spec.path)
        except DreamwireError:
            continue  # an entry of a list section (controlnets.3.scale) that the running preset does not have
        node: dict[str, Any] = {
            "TYPE": osc_type(spec, value),
            "ACCESS": 3 if surface.writable(spec) else 1,
            "VALUE": osc_args(value),
            "DESCRIPTION": f"{spec.doc} ({spec.when})",
        }
        if spec.choices:
            node["RANGE"] = [{"VALS": list(spec.choices)}]
        elif spec.kind == "bool":
            node["RANGE"] = [{"MIN": 0, "MAX": 1}]
        elif spec.minimum is not None or spec.maximum is not None:
            node["RANGE"] = [{"MIN": _number(spec.minimum), "MAX": _number(spec.maximum)}]
        nodes[out(parameter_address(spec.path))] = node
    for command in COMMANDS:
        if not command.ours:
            continue  # a StreamDiffusionTD name: its patches don't browse OSCQuery
        node = {"TYPE": command.osc_type, "ACCESS": 2, "DESCRIPTION": command.doc}
        if command.value is not None:
            node["ACCESS"], node["VALUE"] = 3, command.value(surface)
        if command.range is not None:
            node["RANGE"] = command.range()
        nodes[out(command.address)] = node
    # The two text messages the surface sends out, so that a client (the control page) can LISTEN to them.
    nodes[out("/error")] = {"TYPE": "s", "ACCESS": 1, "DESCRIPTION": "`<address>: <reason>` for every refusal."}
    nodes[out("/status/prompt")] = {
        "TYPE": "s",
        "ACCESS": 1,
        "VALUE": [surface.prompt_shown],
        "DESCRIPTION": "The prompt that renders (a blend as `text:weight | …`).",
    }
    now = surface.status_values()
    for item in STATUS:
        node = {"TYPE": item.osc_type, "ACCESS": 1, "DESCRIPTION": item.doc}
        args = status_args(now.get(item.key), item.osc_type)
        if args is not None:
            node["VALUE"] = args
        nodes[out(item.address)] = node
    return nodes


def _number(value: float | None) -> float | int | None:
    return int(value) if value is not None and float(value).is_integer() else value
