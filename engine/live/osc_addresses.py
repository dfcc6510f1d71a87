"""The OSC address space, generated from the parameter registry: one address per parameter
(`/dreamwire/<section>/<name>`), the commands, short aliases for existing patches, and StreamDiffusionTD's
names, plus the coercion of what real controllers send into the registry's types.

The namespace is optional on what arrives (`/dreamwire/prompt/guidance` and `/prompt/guidance` are the same
address) and always used on what is sent back. The README's OSC tables are made here too (a test keeps them
in sync).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.config.registry import ParamSpec, registry
from engine.core.errors import DreamwireError

INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class Route:
    address: str  # relative to the namespace, e.g. "/guidance"
    target: str  # a registry path ("prompt.guidance") or, for a command, its name ("pause")
    command: bool
    arguments: str = ""  # for the docs, e.g. "f", "s…", "[i]"
    doc: str = ""


COMMANDS: tuple[Route, ...] = (
    Route(
        "/prompt/blend",
        "prompt_blend",
        True,
        "s f s f … [s method]",
        "Blend prompts by weight (method `linear` or `slerp`, the default). Text split into several strings "
        "(Max) is joined up to the next number.",
    ),
    Route("/seed/blend", "seed_blend", True, "i f i f …", "Blend the fixed noise of several seeds by weight."),
    Route("/transition", "transition", True, "f", "Seconds for the changes that follow (0 = cut)."),
    Route("/transition/frames", "transition_frames", True, "i", "Output frames for the changes that follow."),
    Route("/pause", "pause", True, "[i]", "Hold the output; `/pause 0` resumes."),
    Route("/reset", "reset", True, "", "Fresh noise and empty buffers from the current values (a deliberate cut)."),
    Route(
        "/preset",
        "preset",
        True,
        "s",
        "A preset name from presets/ (never a path): its model, stream, prompt and filter values; live keys change "
        "live, rebuild keys only with `osc.allow_rebuild_keys`.",
    ),
    Route("/get", "get", True, "s", "An address: its value goes to the feedback address, at its canonical address."),
    Route("/status", "status", True, "", "A status burst now."),
    Route("/strength", "strength", True, "f", "img2img strength in [0, 1], mapped to `stream.t_index_list` (below)."),
)

ALIASES: tuple[Route, ...] = (
    Route("/prompt", "prompt.text", False, "s…"),
    Route("/negative_prompt", "prompt.negative", False, "s…"),
    Route("/guidance", "prompt.guidance", False, "f"),
    Route("/delta", "prompt.delta", False, "f"),
    Route("/seed", "prompt.seed", False, "i"),
    Route("/t_index_list", "stream.t_index_list", False, "i…"),
    Route("/ssf", "filter.enabled", False, "i", "0/1"),
    Route("/ssf/threshold", "filter.threshold", False, "f"),
    Route("/ssf/max_skip_frames", "filter.max_skip_frames", False, "i"),
)

# StreamDiffusionTD (UDP 8247 in, 8248 out): the same meaning under its names, so a patch only changes its port.
STREAMDIFFUSIONTD: tuple[Route, ...] = (
    Route("/prompt", "prompt.text", False, "s"),
    Route("/negative_prompt", "prompt.negative", False, "s"),
    Route("/prompt_list", "prompt_list", True, "s", "JSON `[[text, weight], …]`: a prompt blend (slerp)."),
    Route("/seed_list", "seed_list", True, "s", "JSON `[[seed, weight], …]`: a seed blend."),
    Route("/t_list", "stream.t_index_list", False, "i…"),
    Route("/guidance_scale", "prompt.guidance", False, "f"),
    Route("/delta", "prompt.delta", False, "f"),
    Route("/seed", "prompt.seed", False, "i"),
    Route("/pause", "pause", True, "", "Hold the output."),
    Route("/play", "play", True, "", "Resume."),
    Route("/get_status", "get_status", True, "", "Answered on `/status` s: `running`, `paused` or `rebuilding`."),
)
STREAMDIFFUSIONTD_UNSUPPORTED = ("/controlnets", "/ipadapter_scale", "/cached_attention", "/fx/")

# Sent to the feedback address (under the namespace): key of LiveEngine.status() (or OSC counter) → address.
STATUS_ADDRESSES: dict[str, tuple[str, str]] = {
    "fps_out": ("/status/fps", "Output frames per second."),
    "latency_p50_ms": ("/status/latency_ms", "Input capture → output, median (ms)."),
    "skip_rate": ("/status/skip_rate", "Share of frames the similarity filter skipped."),
    "frames": ("/status/frame", "Output frames since start."),
    "unet_ms": ("/status/unet_ms", "UNet time per frame (ms)."),
    "dropped": ("/status/dropped", "Input frames dropped (a newer one came first)."),
    "power_w": ("/status/power_w", "GPU power (W), only when known."),
    "osc_malformed": ("/status/malformed", "Malformed OSC datagrams received."),
}


def parameter_address(path: str) -> str:
    """'prompt.guidance' → '/prompt/guidance' (relative to the namespace)."""
    return "/" + path.replace(".", "/")


def routes() -> dict[str, Route]:
    """Every address that arrives (relative to the namespace) → what it does."""
    table = {
        parameter_address(spec.path): Route(parameter_address(spec.path), spec.path, False, osc_type(spec), spec.doc)
        for spec in registry().values()
    }
    for route in (*COMMANDS, *ALIASES, *STREAMDIFFUSIONTD):
        known = table.setdefault(route.address, route)
        if known.target != route.target:
            raise AssertionError(f"{route.address} means both {known.target} and {route.target}")
    return table


class AddressSpace:
    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.routes = routes()

    def route(self, address: str) -> Route:
        """The route of an address as received; DreamwireError when there is none."""
        relative = self.relative(address)
        found = self.routes.get(relative)
        if found is not None:
            return found
        for name in STREAMDIFFUSIONTD_UNSUPPORTED:
            if relative == name.rstrip("/") or relative.startswith(name.rstrip("/") + "/"):
                raise DreamwireError(f"StreamDiffusionTD's {_shown(name)} is not supported yet")
        raise DreamwireError("unknown address (the address space: README, or GET / on the OSCQuery port)")

    def relative(self, address: str) -> str:
        ns = self.namespace
        if ns and (address == ns or address.startswith(ns + "/")):
            return address[len(ns) :] or "/"
        return address

    def out(self, relative: str) -> str:
        """The address sent back for a relative one (with the namespace)."""
        return self.namespace + relative


# ---- coercion: what TouchDesigner, Max and friends send → the registry's types ----------------------------


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
        return [scalar(item, value) for value in list_items(args, split=item != "str")]
    if len(args) != 1:
        raise DreamwireError(f"expects 1 argument ({spec.allowed()}), got {len(args)}")
    if kind.endswith("|null") and args[0] is None:
        return None
    return scalar(kind.removesuffix("|null"), args[0])


def join_text(args: Sequence[Any]) -> str:
    """Several arguments joined with spaces: Max's udpsend splits unquoted text into several strings."""
    if not args:
        raise DreamwireError("expects text, got no argument")
    if any(isinstance(arg, bytes | bytearray | list) or arg is None for arg in args):
        raise DreamwireError(f"expects text, got {[_type_name(arg) for arg in args]}")
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
        raise DreamwireError(f"expects a number, got {_type_name(value)} {value!r}")
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
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError as error:
                raise DreamwireError(f"expects a JSON list, got {text!r} ({error.msg})") from None
            if not isinstance(parsed, list):
                raise DreamwireError(f"expects a list, got {text!r}")
            return parsed
        return [item for item in re.split(r"[\s,]+", text) if item] if split else [text]
    items: list[Any] = []
    for arg in args:
        items.extend(arg if isinstance(arg, list) else [arg])
    if not items:
        raise DreamwireError("expects at least one value, got none")
    return items


def _type_name(value: Any) -> str:
    return {bytes: "blob", bytearray: "blob", type(None): "nil", list: "array"}.get(type(value), type(value).__name__)


def osc_args(value: Any) -> list[Any]:
    """A registry value as OSC arguments: bools as 0/1 (TouchDesigner's OSC In CHOP reads numbers only),
    lists as one argument per item, None as nil."""
    if isinstance(value, bool):
        return [int(value)]
    if isinstance(value, list | tuple):
        return [item for element in value for item in osc_args(element)]
    return [value]


def osc_type(spec: ParamSpec, value: Any = None) -> str:
    """The OSC type tag string of a parameter (a list: one tag per item of `value`, or 'i…' without one)."""
    item = {"int": "i", "float": "f", "bool": "i", "str": "s", "enum": "s"}
    kind = spec.kind.removesuffix("|null")
    if kind.startswith("list["):
        tag = item[kind[len("list[") : -1]]
        return tag * len(value) if isinstance(value, list) else tag + "…"
    if kind == "int" and spec.maximum is not None and spec.maximum > INT32_MAX:
        return "h"  # int64; an int32 'i' is accepted too
    return item[kind]


# ---- /strength ↔ t_index_list ---------------------------------------------------------------------------


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


# ---- the README's tables ----------------------------------------------------------------------------------


def markdown_tables(namespace: str = "/dreamwire") -> str:
    """The README's OSC address tables: parameters, commands, StreamDiffusionTD's names."""
    aliases: dict[str, list[str]] = {}
    for route in (*ALIASES, *STREAMDIFFUSIONTD):
        if not route.command and f"`{route.address}`" not in aliases.setdefault(route.target, []):
            aliases[route.target].append(f"`{route.address}`")
    rows = ["| address | type | allowed | over OSC | also at |", "|---|---|---|---|---|"]
    for spec in registry().values():
        over_osc = {"live": "live", "rebuild": "with `osc.allow_rebuild_keys`", "at start": "read only"}[spec.when]
        allowed = spec.allowed().replace("|", "\\|")
        rows.append(
            f"| `{namespace}{parameter_address(spec.path)}` | {osc_type(spec)} | {allowed} | {over_osc} "
            f"| {', '.join(aliases.get(spec.path, []))} |"
        )
    rows += ["", "| command | arguments | what |", "|---|---|---|"]
    rows += [f"| `{namespace}{r.address}` | {r.arguments or '-'} | {r.doc} |" for r in COMMANDS]
    rows += ["", "| sent to `osc.feedback` | type | what |", "|---|---|---|"]
    rows += [
        f"| `{namespace}{address}` | {'i' if key in ('frames', 'dropped', 'osc_malformed') else 'f'} | {doc} |"
        for key, (address, doc) in STATUS_ADDRESSES.items()
    ]
    rows += [
        f"| `{namespace}/status/prompt` | s | The prompt in effect, whenever it changes. |",
        f"| `{namespace}/error` | s | `<address>: <reason>` for every refused message. |",
        f"| `{namespace}/<section>/<name>` | as above | Each accepted change once applied, and each `/get`. |",
    ]
    rows += ["", "| StreamDiffusionTD | arguments | dreamwire |", "|---|---|---|"]
    for route in STREAMDIFFUSIONTD:
        meaning = route.doc if route.command else f"`{parameter_address(route.target)}`"
        rows.append(f"| `{route.address}` | {route.arguments or '-'} | {meaning} |")
    rows += [f"| `{_shown(n)}` | | not supported yet (answered on `/error`) |" for n in STREAMDIFFUSIONTD_UNSUPPORTED]
    return "\n".join(rows)


def _shown(name: str) -> str:
    """'/fx/' (a prefix) → '/fx/…'."""
    return name + "…" if name.endswith("/") else name
