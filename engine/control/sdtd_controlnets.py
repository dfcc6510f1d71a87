"""StreamDiffusionTD's `/controlnets` on our ControlNets (`controlnets.<i>.<field>`, engine/config/paths.py).

Its format (StreamDiffusionTD's OSC handler passes the JSON to the StreamDiffusion fork's
update_stream_params(controlnet_config=...), documented in that fork's docs/runtime_control.md): one string, a JSON
list with one object per ControlNet:

    [{"model_id": "thibaud/controlnet-sd21-depth-diffusers", "preprocessor": "depth",
      "conditioning_scale": 0.8, "enabled": true, "preprocessor_params": {...}}, ...]

Mapped field by field: model_id → model, conditioning_scale → scale, enabled, control_guidance_start/end → start/end,
preprocessor_params low_threshold/high_threshold → canny_low/canny_high; its preprocessor names onto ours (canny;
depth, depth_tensorrt → depth; soft_edge, hed → soft_edge; passthrough → none; external). Other keys and
preprocessor parameters have no counterpart here and are ignored.

When the list names the models and preprocessors that run, in order, only the live fields change (each one through
the registry path, a scale timed by /transition): no rebuild. Any other list (a net added, removed or swapped) is
the whole `controlnets` list, a rebuild key: refused over the network unless `osc.allow_rebuild_keys`, as our own
`/dreamwire/controlnets`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from engine.config.registry import registry
from engine.config.schema import ControlNetConfig
from engine.control.coerce import join_text
from engine.control.commands import Command, Surface
from engine.core.errors import DreamwireError

PREPROCESSORS = {
    "canny": "canny",
    "depth": "depth",
    "depth_tensorrt": "depth",
    "soft_edge": "soft_edge",
    "hed": "soft_edge",
    "passthrough": "none",
    "none": "none",
    "external": "external",
}
FIELDS = {"model_id": "model", "conditioning_scale": "scale", "enabled": "enabled"}
FIELDS |= {"control_guidance_start": "start", "control_guidance_end": "end"}
CANNY = {"low_threshold": "canny_low", "high_threshold": "canny_high"}
LIVE_FIELDS = ("scale", "enabled", "start", "end", "canny_low", "canny_high")


def translate(entries: Any, running: Sequence[ControlNetConfig]) -> list[dict[str, Any]]:
    """StreamDiffusionTD's list → our entries (as dicts, checked against the schema); a net that keeps its model
    keeps what its fields do not say (its input, depth model, thresholds)."""
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise DreamwireError(f"expects a JSON list of objects (model_id, conditioning_scale, …), got {entries!r}")
    ours = []
    for index, entry in enumerate(entries):
        model = entry.get("model_id")
        if not isinstance(model, str) or not model:
            raise DreamwireError(f"entry {index}: model_id must be a non-empty text, got {model!r}")
        name = entry.get("preprocessor") or "passthrough"
        if name not in PREPROCESSORS:
            raise DreamwireError(
                f"entry {index}: preprocessor {name!r} has no counterpart here (mapped: {', '.join(PREPROCESSORS)})"
            )
        same = index < len(running) and running[index].model == model
        mapped: dict[str, Any] = running[index].model_dump() if same else {}
        mapped |= {ours_: entry[theirs] for theirs, ours_ in FIELDS.items() if theirs in entry}
        mapped["preprocessor"] = PREPROCESSORS[name]
        params = entry.get("preprocessor_params") or {}
        if not isinstance(params, dict):
            raise DreamwireError(f"entry {index}: preprocessor_params must be an object, got {params!r}")
        mapped |= {ours_: params[theirs] for theirs, ours_ in CANNY.items() if theirs in params}
        try:
            ours.append(ControlNetConfig(**mapped).model_dump())
        except ValidationError as error:
            problem = error.errors()[0]
            where = ".".join(str(part) for part in problem["loc"])
            raise DreamwireError(f"entry {index}: {where} {problem['input']!r}: {problem['msg']}") from None
    return ours


def controlnets(surface: Surface, args: Sequence[Any]) -> None:
    text = join_text(args)
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as error:
        raise DreamwireError(f"expects a JSON list, got {text!r} ({error.msg})") from None
    running = surface.engine.requested.snapshot().controlnets
    wanted = translate(entries, running)
    kept = [(net.model, net.preprocessor) for net in running]
    if [(entry["model"], entry["preprocessor"]) for entry in wanted] != kept:
        if not surface.writable(registry()["controlnets"]):
            raise DreamwireError(
                f"adds, removes or swaps a ControlNet ({len(running)} running, {len(wanted)} sent): a rebuild, "
                "refused over the network unless the preset sets osc.allow_rebuild_keys: true; live fields: "
                "/dreamwire/controlnets/<i>/scale, enabled, start, end, canny_low, canny_high"
            )
        surface.set_value("controlnets", wanted)
        return
    for index, (entry, net) in enumerate(zip(wanted, running, strict=True)):
        for field in LIVE_FIELDS:
            if entry[field] != getattr(net, field):
                surface.set_value(f"controlnets.{index}.{field}", entry[field])


def use_controlnet(surface: Surface, args: Sequence[Any]) -> None:
    """`/use_controlnet 0` disables every ControlNet (StreamDiffusionTD's meaning); 1 enables them all."""
    if len(args) != 1 or args[0] not in (0, 1, True, False):
        raise DreamwireError(f"expects 0 or 1, got {list(args)!r}")
    for index, _ in enumerate(surface.engine.requested.snapshot().controlnets):
        surface.set_value(f"controlnets.{index}.enabled", bool(args[0]))


# Reached only without the namespace (`/dreamwire/controlnets` is our list): engine/control/routes.py.
CONTROLNETS = Command(
    "streamdiffusiontd_controlnets",
    "/controlnets",
    "s",
    "JSON `[{model_id, preprocessor, conditioning_scale, enabled, preprocessor_params}, …]`: each entry onto "
    "`/controlnets/<i>/…` (live fields; a changed list is a rebuild key).",
    controlnets,
    "s",
    ours=False,
    streamdiffusiontd="JSON `[{model_id, preprocessor, conditioning_scale, enabled, preprocessor_params}, …]`: "
    "onto `/controlnets/<i>/scale`, `enabled`, … (a changed list of models is a rebuild key).",
    newest_wins=True,
)
USE_CONTROLNET = Command(
    "use_controlnet",
    "/use_controlnet",
    "i",
    "0: every ControlNet disabled; 1: enabled.",
    use_controlnet,
    "i",
    ours=False,
    streamdiffusiontd="0 / 1: `/controlnets/<i>/enabled` of every ControlNet.",
    newest_wins=True,
)
