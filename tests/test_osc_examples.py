"""The OSC examples: the Max patch and the TouchDesigner script name only addresses dreamwire has; the Python
controller plays its cue list against a live engine."""

from __future__ import annotations

import ast
import json
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import preset

from engine.config.registry import registry
from engine.config.schema import OscConfig
from engine.control.messages import STATUS
from engine.control.osc import OscTransport
from engine.control.routes import Router, parameter_address
from engine.core.errors import DreamwireError
from engine.live.events import EngineEvent
from engine.live.loop import LiveEngine
from engine.live.strength import strength_to_t_index_list

ROOT = Path(__file__).resolve().parents[1]
NS = "/dreamwire"


def _feedback_addresses() -> set[str]:
    """What dreamwire sends to the feedback port."""
    sent = {NS + item.address for item in STATUS}
    sent |= {f"{NS}/status/prompt", f"{NS}/error", f"{NS}/status", f"{NS}/strength", f"{NS}/pause"}
    return sent | {NS + parameter_address(path) for path in registry()}


def _unknown(addresses: set[str]) -> list[str]:
    space, feedback, bad = Router(NS), _feedback_addresses(), []
    for address in sorted(addresses):
        try:
            space.route(address)
        except DreamwireError:
            if address not in feedback:
                bad.append(address)
    return bad


def test_the_max_patch_is_json_and_names_only_existing_addresses():
    patch = json.loads((ROOT / "examples" / "maxmsp" / "dreamwire.maxpat").read_text())["patcher"]
    boxes = {b["box"]["id"]: b["box"] for b in patch["boxes"]}
    texts = [b.get("text", "") for b in boxes.values() if b["maxclass"] in ("message", "newobj")]
    assert "udpsend 127.0.0.1 9000" in texts and "udpreceive 9001" in texts
    for line in patch["lines"]:
        assert line["patchline"]["source"][0] in boxes and line["patchline"]["destination"][0] in boxes
    addresses = {token for text in texts for token in text.split() if token.startswith("/")}
    assert len(addresses) > 15
    assert _unknown(addresses) == []


def test_the_touchdesigner_script_parses_and_names_only_existing_addresses():
    path = ROOT / "examples" / "touchdesigner" / "build_dreamwire_network.py"
    source = path.read_text()
    tree = ast.parse(source)
    channels = next(
        ast.literal_eval(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "CHANNELS"
    )
    addresses = {"/" + name for name in channels} | set(re.findall(r"\"(/[^\"\s]+)\"", source))
    assert f"{NS}/prompt/text" in addresses and "/guidance" in addresses
    assert _unknown(addresses) == []
    assert (ROOT / "examples" / "touchdesigner" / "README.md").is_file()


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def running_engine(tiny_taesd_models):
    from bridges.pattern import PatternSource

    feedback_port = _free_udp_port()
    config = preset()
    config.osc = OscConfig(port=0, query_port=0, feedback=f"127.0.0.1:{feedback_port}", status_hz=0)
    engine = LiveEngine(config, models=tiny_taesd_models)
    surface = OscTransport.alone(engine, config.osc, discovery=False)
    engine.start_io(source=PatternSource(64, 64, fps=0), sinks=[])
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            engine.apply_pending_controls()
            engine.step()

    thread = threading.Thread(target=loop)
    thread.start()
    yield engine, surface, feedback_port
    stop.set()
    thread.join()
    surface.close()
    engine.close()


def test_the_python_controller_plays_its_cues_against_a_live_engine(running_engine):
    engine, surface, feedback_port = running_engine
    events: list[EngineEvent] = []
    settled = threading.Event()  # the last cue (/ssf 1) and the blend have been applied on the engine thread

    def listen(event: EngineEvent) -> None:
        events.append(event)
        done_paths = {e.path for e in events if e.kind != "error"}
        if {"filter.enabled", "prompt.blend"} <= done_paths:
            settled.set()

    engine.add_listener(listen)
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "python" / "osc_controller.py"),
            "--port",
            str(surface.server.port),
            "--listen",
            str(feedback_port),
            "--speed",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("cue ") == 10
    answer = re.search(rf"<- {NS}/prompt/guidance \[([0-9.]+)\]", done.stderr)  # the /get answer
    assert answer and float(answer.group(1)) == pytest.approx(1.8)
    # The controller exits once /get is answered; a queued cut or a prompt still being encoded lands a frame later.
    assert settled.wait(timeout=60.0), [(e.kind, e.path, e.message) for e in events]
    assert not [e for e in events if e.kind == "error"]
    # The text at 0 s is encoded off the engine thread: applied, or (on a loaded machine, where its encoding ends
    # after the blend arrived 0.5 s later) superseded by the blend, as the newest prompt request wins.
    text = [e.kind for e in events if e.path == "prompt.text"]
    assert text in (["applied"], ["superseded"]), text
    p = engine.preset
    expected_text = "a forest of glass, morning light" if text == ["applied"] else "a red fox"
    assert (p.prompt.text, p.prompt.seed, p.filter.enabled) == (expected_text, 7, True)
    assert p.stream.t_index_list == strength_to_t_index_list(0.6, 2, 50)
