"""What every preset field is made with: a Section (unknown keys refused, assignments validated) and the field
helpers that say when a change takes effect (live, rebuild, at start) and what applies it. engine/config/schema.py
and the sections kept in modules of their own (engine/config/processors.py) use them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# What applies a change (engine/live/loop.py has one handler per name). cond, uncond, guidance, delta and noise
# are also the pipeline values a change can move over a duration (engine/live/targets.py).
Apply = Literal[
    "cond",
    "uncond",
    "guidance",
    "delta",
    "noise",
    "schedule",
    "filter",
    "source",
    "sinks",
    "controlnet",
    "rebuild",
    "tempo",
    "processor",
    "feature_bank",
    "lora",
    "ip_adapter",
]


def live(default: Any, doc: str, apply: Apply, **constraints: Any) -> Any:
    """A parameter that changes between two frames, without a rebuild."""
    return Field(default, description=doc, json_schema_extra={"live": True, "apply": apply}, **constraints)


def rebuild(default: Any, doc: str, apply: Apply = "rebuild", **constraints: Any) -> Any:
    """A parameter whose change rebuilds the pipeline (the last frame is held meanwhile); never changed over the
    network. The io URIs use this too, with their own apply handler: they swap bridges, not the pipeline."""
    return Field(default, description=doc, json_schema_extra={"live": False, "apply": apply}, **constraints)


def at_start(default: Any, doc: str, **constraints: Any) -> Any:
    """A parameter read once when `dreamwire run` starts (the control surface's own settings)."""
    return Field(default, description=doc, json_schema_extra={"live": False, "startup": True}, **constraints)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
