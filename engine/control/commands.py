"""The command table: every control-surface command in one place, with its arguments, doc, OSCQuery type, range
and value, and its handler. Routing (engine/control/routes.py), OSCQuery (engine/control/nodes.py) and the README
tables (engine/control/docs.py) are all read off this table; a transport (OSC today, MIDI and Link next) only
hands `(address, args)` to the surface.

A handler runs on the transport's thread: it coerces its arguments (engine/control/coerce.py) and calls the
engine's thread-safe methods, or raises DreamwireError with one line naming the bad value.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import ValidationError

from engine.config import paths
from engine.config.presets import available_presets, load_preset
from engine.config.registry import ParamSpec, registry
from engine.control.coerce import join_text, osc_args, scalar
from engine.control.tempo_commands import (
    lfo,
    lfo_clear,
    lfo_remove,
    midi_learn,
    tempo_beat,
    tempo_tap,
    transition_bars,
    transition_beats,
)
from engine.control.transition import NextDuration
from engine.core.errors import DreamwireError
from engine.live.loop import LiveEngine
from engine.live.strength import strength_to_t_index_list, t_index_list_to_strength

log = logging.getLogger(__name__)


class Surface(Protocol):
    """What a handler may use of the control surface (engine/control/surface.py), which imports this table."""

    engine: LiveEngine
    transition: NextDuration
    router: Any  # engine/control/routes.py's Router

    def reply(self, relative: str, *args: Any) -> None: ...
    def set_value(self, path: str, value: Any) -> None: ...
    def check_value(self, path: str, value: Any) -> None: ...
    def writable(self, spec: ParamSpec) -> bool: ...
    def value(self, path: str) -> Any: ...
    def emit_status(self) -> None: ...


Handler = Callable[[Surface, Sequence[Any]], None]
Getter = Callable[[Surface], list[Any]]

# What /preset changes (controlnets: the whole list, a rebuild key); io and osc stay as started.
PRESET_SECTIONS = ("model", "stream", "prompt", "filter", "controlnets", "processors")
PRESET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class Command:
    name: str
    address: str  # relative to the namespace, e.g. "/prompt/blend"
    arguments: str  # for the docs, e.g. "s f s f … [s method]"
    doc: str
    handler: Handler
    osc_type: str = "N"  # OSCQuery TYPE ("N": no argument)
    range: Callable[[], list[dict[str, Any]]] | None = None  # OSCQuery RANGE, made when asked (preset names)
    value: Getter | None = None  # OSCQuery VALUE (then ACCESS is read-write), and what /get answers
    ours: bool = True  # listed among dreamwire's commands (False: only a StreamDiffusionTD name)
    streamdiffusiontd: str = ""  # StreamDiffusionTD's meaning under the same address ("": not one of its names)
    # Only the newest of a run of these matters (a value, a blend): a transport may drop the older ones of a burst
    # unread, as the engine would supersede them. False for queries, barriers (/transition) and one-shot commands.
    newest_wins: bool = False


# ---- handlers ---------------------------------------------------------------------------------------------


def one(args: Sequence[Any], kind: str) -> Any:
    if len(args) != 1:
        raise DreamwireError(f"expects 1 argument ({kind}), got {len(args)}")
    return scalar(kind, args[0])


def momentary(args: Sequence[Any]) -> bool:
    """A button: no argument (or nil) or a true value acts; 0 is the button's release and is ignored."""
    return not args or args[0] is None or bool(one(args, "bool"))


def prompt_blend(surface: Surface, args: Sequence[Any]) -> None:
    items, words = [], []
    for arg in args:
        if isinstance(arg, int | float) and not isinstance(arg, bool):
            if not words:
                raise DreamwireError(f"weight {arg!r} has no text before it (expects s f s f … [s method])")
            items.append((join_text(words), float(arg)))
            words = []
        else:
            words.append(arg)
    method = join_text(words) if words else "slerp"
    if not items:
        raise DreamwireError("expects text and weight pairs: s f s f … [s method]")
    surface.engine.blend_prompts(items, method=method, **surface.transition.kwargs())  # type: ignore[arg-type]


def seed_blend(surface: Surface, args: Sequence[Any]) -> None:
    if not args or len(args) % 2:
        raise DreamwireError(f"expects seed and weight pairs: i f i f …, got {len(args)} arguments")
    pairs = [(scalar("int", args[i]), scalar("float", args[i + 1])) for i in range(0, len(args), 2)]
    surface.engine.blend_seeds(pairs, **surface.transition.kwargs())


def json_pairs(args: Sequence[Any], what: str, first: Callable[[Any], bool]) -> list[tuple[Any, float]]:
    """StreamDiffusionTD's JSON `[[x, weight], …]`; each x must pass `first`, each weight must be a number."""
    text = join_text(args)
    try:
        pairs = json.loads(text)
    except json.JSONDecodeError as error:
        raise DreamwireError(f"expects a JSON list of [{what}, weight], got {text!r} ({error.msg})") from None
    if not isinstance(pairs, list) or not pairs:
        raise DreamwireError(f"expects a JSON list of [{what}, weight] pairs, got {text!r}")
    for pair in pairs:
        ok = isinstance(pair, list) and len(pair) == 2 and first(pair[0])
        if not ok or isinstance(pair[1], bool) or not isinstance(pair[1], int | float):
            raise DreamwireError(f"expects [{what}, weight] pairs (weight a number), got {json.dumps(pair)}")
    return [(x, float(weight)) for x, weight in pairs]


def prompt_list(surface: Surface, args: Sequence[Any]) -> None:
    pairs = json_pairs(args, "text", lambda x: isinstance(x, str))
    surface.engine.blend_prompts(pairs, method="slerp", **surface.transition.kwargs())


def seed_list(surface: Surface, args: Sequence[Any]) -> None:
    pairs = json_pairs(args, "seed", lambda x: isinstance(x, int) and not isinstance(x, bool))
    surface.engine.blend_seeds(pairs, **surface.transition.kwargs())


# StreamDiffusionTD's /cached_attention JSON keys → our feature bank (engine/pipeline/feature_bank.py).
CACHED_ATTENTION = {
    "use_cached_attn": "feature_bank.enabled",
    "cache_maxframes": "feature_bank.max_frames",
    "cache_interval": "feature_bank.interval",
    "fi_strength": "feature_bank.fusion_strength",
    "fi_threshold": "feature_bank.fusion_threshold",
}


def cached_attention(surface: Surface, args: Sequence[Any]) -> None:
    """StreamDiffusionTD's `/cached_attention s '{"cache_maxframes": 2, "cache_interval": 4}'`: each key checked,
    then all set (all or none)."""
    text = join_text(args)
    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        raise DreamwireError(
            f"expects a JSON object of {', '.join(CACHED_ATTENTION)}, got {text!r} ({error.msg})"
        ) from None
    if not isinstance(values, dict) or not values:
        raise DreamwireError(f"expects a JSON object of {', '.join(CACHED_ATTENTION)}, got {text!r}")
    unknown = [key for key in values if key not in CACHED_ATTENTION]
    if unknown:
        raise DreamwireError(f"unknown key {unknown[0]!r} (known: {', '.join(CACHED_ATTENTION)})")
    bank = surface.engine.requested.snapshot().feature_bank
    for key, value in values.items():  # every value checked before any is sent: taken whole or not at all
        try:
            setattr(bank, CACHED_ATTENTION[key].split(".")[1], value)
        except ValidationError as error:
            raise DreamwireError(f"{key}: {value!r} is not accepted: {error.errors()[0]['msg']}") from None
    for key, value in values.items():
        surface.set_value(CACHED_ATTENTION[key], value)


def transition(surface: Surface, args: Sequence[Any]) -> None:
    surface.transition.set_seconds(one(args, "float"))
    surface.reply("/transition", surface.transition.seconds)  # accepted: a controller's UI can confirm it


def transition_frames(surface: Surface, args: Sequence[Any]) -> None:
    surface.transition.set_frames(one(args, "int"))
    surface.reply("/transition/frames", surface.transition.frames)


def pause(surface: Surface, args: Sequence[Any]) -> None:
    surface.engine.pause(True if not args else one(args, "bool"))


def play(surface: Surface, args: Sequence[Any]) -> None:
    surface.engine.pause(False)


def reset(surface: Surface, args: Sequence[Any]) -> None:
    if momentary(args):
        surface.engine.reset()


def status(surface: Surface, args: Sequence[Any]) -> None:
    if momentary(args):
        surface.emit_status()


def get_status(surface: Surface, args: Sequence[Any]) -> None:
    if momentary(args):
        now = surface.engine.status()
        surface.reply("/status", "rebuilding" if now["rebuilding"] else "paused" if now["paused"] else "running")


def parameter_address(path: str) -> str:
    """'prompt.guidance' → '/prompt/guidance' (relative to the namespace)."""
    return "/" + path.replace(".", "/")


def strength(surface: Surface, args: Sequence[Any]) -> None:
    stream = surface.engine.requested.snapshot().stream
    indices = strength_to_t_index_list(one(args, "float"), len(stream.t_index_list), stream.num_inference_steps)
    surface.set_value("stream.t_index_list", indices)


def strength_value(surface: Surface) -> list[Any]:
    stream = surface.engine.preset.stream
    return [t_index_list_to_strength(stream.t_index_list, stream.num_inference_steps)]


def get(surface: Surface, args: Sequence[Any]) -> None:
    address = join_text(args).strip() if args else ""
    if not address:
        raise DreamwireError("expects an address, e.g. /prompt/guidance; got none")
    try:
        route = surface.router.route(address)
    except DreamwireError as error:
        raise DreamwireError(f"{address}: {error}") from None
    if route.command is None:
        surface.reply(parameter_address(route.target), *osc_args(surface.value(route.target)))  # canonical
        return
    if route.command.value is None:
        raise DreamwireError(f"{address} is a command; it has no value")
    surface.reply(route.command.address, *route.command.value(surface))


def preset(surface: Surface, args: Sequence[Any]) -> None:
    name = join_text(args)
    if not PRESET_NAME.fullmatch(name):
        raise DreamwireError(f"/preset takes a name from presets/, never a path: {name!r}")
    if name not in available_presets():
        raise DreamwireError(f"unknown preset {name!r} (available: {', '.join(available_presets())})")
    target = load_preset(name)  # validated whole: its values fit together
    in_effect, requested = surface.engine.preset, surface.engine.requested.snapshot()
    specs = [spec for spec in registry().values() if spec.path.split(".")[0] in PRESET_SECTIONS and not spec.item]
    # A key equal to the value in effect (and not asked to change since) is not a change.
    changes = [
        (spec, _get(target, spec.path))
        for spec in specs
        if _get(target, spec.path) != _get(in_effect, spec.path)
        or _get(target, spec.path) != _get(requested, spec.path)
    ]
    refused = [spec.path for spec, _ in changes if not surface.writable(spec)]
    if refused:
        raise DreamwireError(
            f"preset {name!r} changes rebuild keys {', '.join(refused)}: refused over the network unless the "
            "running preset sets osc.allow_rebuild_keys: true"
        )
    ordered = _schedule_first(changes, requested.stream.num_inference_steps)
    for spec, value in ordered:  # every change checked before any is sent: a preset is taken whole or not at all
        surface.check_value(spec.path, value)
    for spec, value in ordered:  # the engine validates each value (once); the whole preset was validated at load
        surface.engine.set(spec.path, value, **surface.transition.kwargs())
    log.info("/preset %s: %d values changed", name, len(changes))


def _get(preset: Any, path: str) -> Any:
    return paths.read(preset, path)


def _schedule_first(changes: list[tuple[ParamSpec, Any]], steps_now: int) -> list[tuple[ParamSpec, Any]]:
    """Order a preset's changes so that each is valid against the ones before it: a longer schedule before the
    t_index_list that needs it, a shorter one after."""

    def key(item: tuple[ParamSpec, Any]) -> int:
        spec, value = item
        if spec.path == "stream.num_inference_steps":
            return -1 if value > steps_now else 1
        return 0

    return sorted(changes, key=key)


# ---- the table --------------------------------------------------------------------------------------------

COMMANDS: tuple[Command, ...] = (
    Command(
        "prompt_blend",
        "/prompt/blend",
        "s f s f … [s method]",
        "Blend prompts by weight (method `linear` or `slerp`, the default). Text split into several strings "
        "(Max) is joined up to the next number.",
        prompt_blend,
        osc_type="sf",
        newest_wins=True,
    ),
    Command(
        "seed_blend",
        "/seed/blend",
        "i f i f …",
        "Blend the fixed noise of several seeds by weight.",
        seed_blend,
        "if",
        newest_wins=True,
    ),
    Command(
        "transition",
        "/transition",
        "f",
        "Seconds for the changes that follow (0 = cut), from every controller.",
        transition,
        "f",
        range=lambda: [{"MIN": 0, "MAX": 3600}],
        value=lambda surface: [surface.transition.seconds or 0.0],
    ),
    Command(
        "transition_frames",
        "/transition/frames",
        "i",
        "Output frames for the changes that follow.",
        transition_frames,
        "i",
        value=lambda surface: [surface.transition.frames or 0],
    ),
    Command(
        "transition_beats",
        "/transition/beats",
        "f",
        "Beats for the changes that follow (on the beat clock: a tempo change keeps the end on its beat).",
        transition_beats,
        "f",
        range=lambda: [{"MIN": 0, "MAX": 1024}],
        value=lambda surface: [surface.transition.get("beats") or 0.0],
    ),
    Command(
        "transition_bars",
        "/transition/bars",
        "f",
        "Bars (of `tempo.quantum` beats) for the changes that follow.",
        transition_bars,
        "f",
        range=lambda: [{"MIN": 0, "MAX": 1024}],
        value=lambda surface: [surface.transition.get("bars") or 0.0],
    ),
    Command(
        "tempo_beat",
        "/tempo/beat",
        "f",
        "The beat now (TouchDesigner's Beat CHOP; `tempo.source` osc or internal); `/tempo/bpm` sets the tempo.",
        tempo_beat,
        "f",
        value=lambda surface: [surface.engine.tempo.clock.beat_at()],
    ),
    Command(
        "tempo_tap",
        "/tempo/tap",
        "[i]",
        "Tap tempo: the beat lands on the tap; two taps or more set the BPM.",
        tempo_tap,
        "i",
    ),
    Command(
        "lfo",
        "/lfo",
        "s s f s f [f [i]]",
        "An LFO: address, shape (sine, triangle, saw, square, random), rate, unit (beats, bars: the period; hz), "
        "depth in the parameter's units [, phase 0-1 [, layer 0-7: LFOs on one parameter add up]]; replaces the "
        "LFO on that address and layer.",
        lfo,
        "ssfsf",
    ),
    Command(
        "lfo_remove",
        "/lfo/remove",
        "s [i]",
        "Remove an address's LFOs, or one layer's (back to its value).",
        lfo_remove,
        "s",
    ),
    Command("lfo_clear", "/lfo/clear", "", "Remove every LFO.", lfo_clear),
    Command(
        "midi_learn",
        "/midi/learn",
        "s",
        "MIDI learn: the next MIDI control that moves is mapped to this address, and the mapping file is saved.",
        midi_learn,
        "s",
    ),
    Command(
        "pause",
        "/pause",
        "[i]",
        "Hold the output; `/pause 0` resumes.",
        pause,
        "i",
        range=lambda: [{"MIN": 0, "MAX": 1}],
        value=lambda surface: [int(surface.engine.paused)],
        streamdiffusiontd="Hold the output.",
    ),
    Command("play", "/play", "", "Resume.", play, ours=False, streamdiffusiontd="Resume."),
    Command("reset", "/reset", "", "Fresh noise and empty buffers from the current values (a deliberate cut).", reset),
    Command(
        "preset",
        "/preset",
        "s",
        "A preset name from presets/ (never a path): its model, stream, prompt and filter values; a value equal to "
        "the one in effect is no change, live keys change live, rebuild keys only with `osc.allow_rebuild_keys`.",
        preset,
        "s",
        range=lambda: [{"VALS": available_presets()}],
    ),
    Command(
        "get",
        "/get",
        "s",
        "An address: its value goes to the feedback address, at its canonical address.",
        get,
        "s",
    ),
    Command("status", "/status", "", "A status burst now.", status),
    Command(
        "strength",
        "/strength",
        "f",
        "img2img strength in [0, 1], mapped to `stream.t_index_list` (below).",
        strength,
        "f",
        range=lambda: [{"MIN": 0.0, "MAX": 1.0}],
        value=strength_value,
        newest_wins=True,
    ),
    Command(
        "prompt_list",
        "/prompt_list",
        "s",
        "JSON `[[text, weight], …]`: a prompt blend (slerp).",
        prompt_list,
        "s",
        ours=False,
        streamdiffusiontd="JSON `[[text, weight], …]`: a prompt blend (slerp).",
        newest_wins=True,
    ),
    Command(
        "seed_list",
        "/seed_list",
        "s",
        "JSON `[[seed, weight], …]`: a seed blend.",
        seed_list,
        "s",
        ours=False,
        streamdiffusiontd="JSON `[[seed, weight], …]`: a seed blend.",
        newest_wins=True,
    ),
    Command(
        "cached_attention",
        "/cached_attention",
        "s",
        "JSON `{cache_maxframes, cache_interval, fi_strength, fi_threshold, use_cached_attn}` (any of them): the "
        "feature bank's max_frames, interval, fusion_strength, fusion_threshold, enabled.",
        cached_attention,
        "s",
        ours=False,
        streamdiffusiontd="JSON `{cache_maxframes, cache_interval, fi_strength, fi_threshold, use_cached_attn}` "
        "(any of them): `/feature_bank/max_frames`, `interval`, `fusion_strength`, `fusion_threshold`, `enabled`.",
    ),
    Command(
        "get_status",
        "/get_status",
        "",
        "Answered on `/status` s: `running`, `paused` or `rebuilding`.",
        get_status,
        ours=False,
        streamdiffusiontd="Answered on `/status` s: `running`, `paused` or `rebuilding`.",
    ),
)
