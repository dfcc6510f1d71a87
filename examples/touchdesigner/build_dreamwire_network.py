"""Builds a dreamwire control network inside a TouchDesigner component (see README.md beside this file).

Paste into a Text DAT inside the component that should hold the network, then right-click the DAT → Run Script.
It runs inside TouchDesigner: `me`, `ui` and the operator types (oscoutDAT, constantCHOP, …) are TouchDesigner's
globals. Running it again replaces what it made.
"""

# ruff: noqa: F821  (TouchDesigner's globals)

from typing import Any

HOST = "127.0.0.1"
OSC_PORT = 9000  # osc.port (8247 with --preset osc-streamdiffusiontd)
FEEDBACK_PORT = 9001  # the port of osc.feedback (8248 with --preset osc-streamdiffusiontd)
SENDER = "dreamwire"  # the Spout / Syphon sender name of dreamwire's output

# Numbers go through an OSC Out CHOP: one channel per parameter, sent as "/" + channel name (the short aliases).
CHANNELS = {"guidance": 1.2, "delta": 1.0, "strength": 0.4, "ssf": 0.0, "ssf/threshold": 0.98}

# Text goes through an OSC Out DAT (OSC Out CHOP sends numbers only).
PROMPT_SCRIPT = '''# mod("dreamwire_prompts").send_prompt("a glass city", seconds=2) from anywhere in the project.
def send_prompt(text, seconds=0.0):
    osc = op("dreamwire_osc_out")
    osc.sendOSC("/dreamwire/transition", [float(seconds)])
    osc.sendOSC("/dreamwire/prompt/text", [text])


def send_blend(pairs, method="slerp"):
    """pairs: [("a forest", 0.7), ("a city", 0.3)]"""
    values = [v for text, weight in pairs for v in (text, float(weight))]
    op("dreamwire_osc_out").sendOSC("/dreamwire/prompt/blend", values + [method])


def send_command(address, *values):
    """e.g. send_command("/dreamwire/pause", 1), send_command("/dreamwire/reset"), send_command("/dreamwire/status")"""
    op("dreamwire_osc_out").sendOSC(address, list(values))
'''


def make(kind: Any, name: str, column: int, row: int) -> Any:
    """A fresh operator at a grid position (the old one of that name is replaced)."""
    parent = me.parent()
    old = parent.op(name)
    if old is not None:
        old.destroy()
    node = parent.create(kind, name)
    node.nodeX, node.nodeY = 220 * column, -160 * row
    return node


def build() -> None:
    osc_dat = make(oscoutDAT, "dreamwire_osc_out", 0, 0)
    osc_dat.par.netaddress = HOST
    osc_dat.par.port = OSC_PORT
    script = make(textDAT, "dreamwire_prompts", 1, 0)
    script.text = PROMPT_SCRIPT

    controls = make(constantCHOP, "dreamwire_controls", 0, 1)
    for index, (name, value) in enumerate(CHANNELS.items()):
        setattr(controls.par, f"name{index}", name)
        setattr(controls.par, f"value{index}", value)
    osc_chop = make(oscoutCHOP, "dreamwire_osc_chop", 1, 1)
    osc_chop.par.netaddress = HOST
    osc_chop.par.port = OSC_PORT
    osc_chop.inputConnectors[0].connect(controls)

    # The numeric status (/dreamwire/status/fps, /latency_ms, /skip_rate, /frame, /unet_ms, /dropped), at
    # osc.status_hz (4 a second by default); text (/dreamwire/error, /dreamwire/status/prompt) needs an OSC In DAT.
    status = make(oscinCHOP, "dreamwire_status", 0, 2)
    status.par.port = FEEDBACK_PORT

    # Frames: TouchDesigner's texture sharing for the platform (Spout on Windows, Syphon on macOS).
    frames_in = make(syphonspoutinTOP, "dreamwire_frames_in", 0, 3)
    frames_in.par.sendername = SENDER
    source = make(moviefileinTOP, "dreamwire_source", 1, 3)
    frames_out = make(syphonspoutoutTOP, "dreamwire_frames_out", 2, 3)
    frames_out.par.sendername = "touchdesigner"
    frames_out.inputConnectors[0].connect(source)


build()
