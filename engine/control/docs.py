"""The README's OSC tables, made from the registry, the command table and the status table (tests/test_docs.py
keeps the README in sync): `python -c "from engine.control.docs import markdown_tables; print(markdown_tables())"`."""

from __future__ import annotations

from engine.config.registry import documented
from engine.control.coerce import osc_type
from engine.control.commands import COMMANDS
from engine.control.messages import STATUS
from engine.control.routes import (
    ALIASES,
    STREAMDIFFUSIONTD,
    STREAMDIFFUSIONTD_COMMANDS,
    STREAMDIFFUSIONTD_UNSUPPORTED,
    parameter_address,
    shown,
)


def markdown_tables(namespace: str = "/dreamwire") -> str:
    """Parameters, commands, what is sent back, and StreamDiffusionTD's names."""
    aliases: dict[str, list[str]] = {}
    for route in (*ALIASES, *STREAMDIFFUSIONTD):
        if f"`{route.address}`" not in aliases.setdefault(route.target, []):
            aliases[route.target].append(f"`{route.address}`")
    rows = ["| address | type | allowed | over OSC | also at |", "|---|---|---|---|---|"]
    for spec in documented():  # a list section's fields once, as /controlnets/<i>/scale
        over_osc = {"live": "live", "rebuild": "with `osc.allow_rebuild_keys`", "at start": "read only"}[spec.when]
        allowed = spec.allowed().replace("|", "\\|")
        rows.append(
            f"| `{namespace}{parameter_address(spec.path)}` | {osc_type(spec)} | {allowed} | {over_osc} "
            f"| {', '.join(aliases.get(spec.path, []))} |"
        )
    rows += ["", "| command | arguments | what |", "|---|---|---|"]
    rows += [f"| `{namespace}{c.address}` | {c.arguments or '-'} | {c.doc} |" for c in COMMANDS if c.ours]
    rows += ["", "| sent to `osc.feedback` | type | what |", "|---|---|---|"]
    rows += [f"| `{namespace}{item.address}` | {item.osc_type} | {item.doc} |" for item in STATUS]
    rows += [
        f"| `{namespace}/status/prompt` | s | What renders (a prompt, or a blend as `text:weight \\| …`), when it "
        "changes. |",
        f"| `{namespace}/error` | s | `<address>: <reason>` for every refused message and failed change. |",
        f"| `{namespace}/<section>/<name>` | as above | Each accepted change once applied, and each `/get`. |",
        f"| `{namespace}/prompt/blend`, `/seed/blend` | s f …, i f … | Each blend once applied (also from "
        "`/prompt_list`, `/seed_list`). |",
        f"| `{namespace}/pause`, `/reset`, `/transition`, `/transition/frames` | i, -, f, i | Each one accepted. |",
    ]
    rows += ["", "| StreamDiffusionTD | arguments | dreamwire |", "|---|---|---|"]
    for route in STREAMDIFFUSIONTD:
        rows.append(f"| `{route.address}` | {route.arguments or '-'} | `{parameter_address(route.target)}` |")
    for command in (*COMMANDS, *STREAMDIFFUSIONTD_COMMANDS):
        if command.streamdiffusiontd:
            rows.append(f"| `{command.address}` | {command.arguments or '-'} | {command.streamdiffusiontd} |")
    rows += [f"| `{shown(n)}` | | not supported yet (answered on `/error`) |" for n in STREAMDIFFUSIONTD_UNSUPPORTED]
    return "\n".join(rows)
