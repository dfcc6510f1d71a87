"""The router: an address as received → a registry parameter or a command of the table (engine/control/
commands.py). One address per parameter (`/<section>/<name>`), the commands, short aliases for existing
patches, and StreamDiffusionTD's names.

The namespace (`osc.namespace`, "/dreamwire") is optional on what arrives (`/dreamwire/prompt/guidance` and
`/prompt/guidance` are the same address) and always used on what is sent back.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from engine.config.registry import registry
from engine.control.coerce import osc_type
from engine.control.commands import COMMANDS, Command, parameter_address
from engine.control.sdtd_controlnets import CONTROLNETS, USE_CONTROLNET
from engine.core.errors import DreamwireError


@dataclass(frozen=True)
class Route:
    address: str  # relative to the namespace, e.g. "/guidance"
    target: str  # a registry path ("prompt.guidance") or, for a command, its name ("pause")
    command: Command | None = None
    arguments: str = ""  # for the docs, e.g. "f", "s…", "[i]"


ALIASES: tuple[Route, ...] = (
    Route("/prompt", "prompt.text", arguments="s…"),
    Route("/negative_prompt", "prompt.negative", arguments="s…"),
    Route("/guidance", "prompt.guidance", arguments="f"),
    Route("/delta", "prompt.delta", arguments="f"),
    Route("/seed", "prompt.seed", arguments="i"),
    Route("/t_index_list", "stream.t_index_list", arguments="i…"),
    Route("/ssf", "filter.enabled", arguments="i"),
    Route("/ssf/threshold", "filter.threshold", arguments="f"),
    Route("/ssf/max_skip_frames", "filter.max_skip_frames", arguments="i"),
)

# StreamDiffusionTD's feedback_loop params (its FX processors page) → ours on a feedback processor, OSC types.
FX_FEEDBACK_PARAMS = (
    ("feedback_strength", "strength", "f"),
    ("zoom", "zoom", "f"),
    ("pan_x", "pan_x", "f"),
    ("pan_y", "pan_y", "f"),
    ("rotation", "rotation", "f"),
    ("border_mode", "border", "s"),
)

# StreamDiffusionTD (UDP 8247 in, 8248 out): the same meaning under its names, so a patch only changes its port.
# Its commands (/prompt_list, /seed_list, /pause, /play, /get_status) are in the command table.
STREAMDIFFUSIONTD: tuple[Route, ...] = (
    Route("/prompt", "prompt.text", arguments="s"),
    Route("/negative_prompt", "prompt.negative", arguments="s"),
    Route("/t_list", "stream.t_index_list", arguments="i…"),
    Route("/guidance_scale", "prompt.guidance", arguments="f"),
    Route("/delta", "prompt.delta", arguments="f"),
    Route("/seed", "prompt.seed", arguments="i"),
    # Its FX (`/fx/<processor>/<param>`: the first processor of that type; /latent_feedback_strength): ours are the
    # first entry of image_pre (feedback) and of latent_pre (latent_feedback), processors.<stage>.0.<param>.
    *(
        Route(f"/fx/{name}/{param}", f"processors.image_pre.0.{ours}", arguments=kind)
        for name in ("feedback_loop", "feedback_transform")
        for param, ours, kind in FX_FEEDBACK_PARAMS
    ),
    Route("/fx/latent_feedback/feedback_strength", "processors.latent_pre.0.strength", arguments="f"),
    Route("/latent_feedback_strength", "processors.latent_pre.0.strength", arguments="f"),
    Route("/ipadapter_scale", "ip_adapter.scale", arguments="f"),  # its IP Adapter Scale: one float, 0 to 1
)
STREAMDIFFUSIONTD_UNSUPPORTED: tuple[str, ...] = ()  # every name we know of is mapped
# Its commands of its own module (engine/control/sdtd_controlnets.py). `/controlnets` is reached only without the
# namespace: there it is StreamDiffusionTD's JSON list; `/dreamwire/controlnets` stays our list.
STREAMDIFFUSIONTD_COMMANDS = (CONTROLNETS, USE_CONTROLNET)
_SHADOWED = {CONTROLNETS.address: Route(CONTROLNETS.address, CONTROLNETS.name, CONTROLNETS, CONTROLNETS.arguments)}


@cache
def routes() -> dict[str, Route]:
    """Every address that arrives (relative to the namespace) → what it does."""
    table = {
        parameter_address(spec.path): Route(parameter_address(spec.path), spec.path, arguments=osc_type(spec))
        for spec in registry().values()
    }
    commands = [Route(c.address, c.name, c, c.arguments) for c in (*COMMANDS, USE_CONTROLNET)]
    for route in (*commands, *ALIASES, *STREAMDIFFUSIONTD):
        known = table.setdefault(route.address, route)
        if known.target != route.target:
            raise AssertionError(f"{route.address} means both {known.target} and {route.target}")
    return table


class Router:
    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.routes = routes()

    def route(self, address: str) -> Route:
        """The route of an address as received; DreamwireError when there is none."""
        relative = self.relative(address)
        found = self.routes.get(relative)
        if relative == address and relative in _SHADOWED:
            return _SHADOWED[relative]
        # A StreamDiffusionTD name shadows our address of the same name sent without the namespace (its
        # `/controlnets` is not our list): ours is reached with the namespace; `/controlnets/0/scale` is ours either
        # way.
        if found is None or (relative == address and unsupported(relative).rstrip("/") == relative):
            name = unsupported(relative)
            if name:
                raise DreamwireError(f"StreamDiffusionTD's {shown(name)} is not supported yet")
        if found is not None:
            return found
        if relative.startswith("/fx/"):
            raise DreamwireError(
                "StreamDiffusionTD's /fx/… is mapped only for feedback_loop (feedback_transform) and latent_feedback: "
                "ours are /processors/<stage>/<i>/<param> (README, processor stages)"
            )
        raise DreamwireError("unknown address (the address space: README, or GET / on the OSCQuery port)")

    def relative(self, address: str) -> str:
        ns = self.namespace
        if ns and (address == ns or address.startswith(ns + "/")):
            return address[len(ns) :] or "/"
        return address

    def out(self, relative: str) -> str:
        """The address sent back for a relative one (with the namespace)."""
        return self.namespace + relative


def unsupported(relative: str) -> str:
    """The StreamDiffusionTD name (not supported yet) that `relative` falls under, or ''."""
    for name in STREAMDIFFUSIONTD_UNSUPPORTED:
        if relative == name.rstrip("/") or relative.startswith(name.rstrip("/") + "/"):
            return name
    return ""


def shown(name: str) -> str:
    """'/fx/' (a prefix) → '/fx/…'."""
    return name + "…" if name.endswith("/") else name
