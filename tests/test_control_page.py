"""The control page in a real browser (headless chromium over the DevTools protocol: tests/cdp.py) against a
running engine: the offline-demo preset on the tiny model, its preview and its OSC surface, as `dreamwire run`
serves them. One engine and one browser for the whole module (the CI budget is tight); each test sets up the
values it checks.

DREAMWIRE_PAGE_SCREENSHOT=examples/control_page.png writes the README's screenshot (the last test takes it)."""

from __future__ import annotations

import io
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cdp import Browser
from PIL import Image
from pythonosc.osc_message_builder import OscMessageBuilder

from bridges.page_access import links
from engine.config.presets import load_preset
from engine.config.registry import registry
from engine.config.schema import OscConfig
from engine.control.osc import OscTransport
from engine.core.instance import instance
from engine.live.loop import LiveEngine

NS = "/dreamwire"
NAME = "pagetest"  # the instance name: the page's title, and how the preview finds its OSCQuery server


class Stage:
    """`dreamwire run --preset offline-demo --output preview:` in-process: the engine on its own thread."""

    def __init__(self, models: Any) -> None:
        config = load_preset("offline-demo")
        config.io.outputs = ["preview:?port=0"]
        config.osc = OscConfig(port=0, query_port=0, feedback="", status_hz=4)
        self.engine = LiveEngine(config, models=models, instance=instance(NAME))
        self.surface = OscTransport.alone(self.engine, config.osc, discovery=False)
        assert self.surface.server is not None
        self.osc = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.osc_target = ("127.0.0.1", self.surface.server.port)
        self.thread = threading.Thread(target=self.engine.run, name="test-engine")
        self.thread.start()
        deadline = time.monotonic() + 60
        while not links().page_ports(NAME):  # the preview opens on its sink thread
            assert time.monotonic() < deadline, "the preview never opened"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{min(links().page_ports(NAME))}/"

    def send(self, address: str, *args: Any) -> None:
        builder = OscMessageBuilder(address=address)
        for arg in args:
            builder.add_arg(arg)
        self.osc.sendto(builder.build().dgram, self.osc_target)

    def wait_for(self, check: Any, what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, f"the engine never got {what}"
            time.sleep(0.02)

    def close(self) -> None:
        self.engine.stop()
        self.thread.join(timeout=30)
        self.surface.close()
        self.osc.close()


@pytest.fixture(scope="module")
def stage(tiny_taesd_models) -> Iterator[Stage]:
    running = Stage(tiny_taesd_models)
    yield running
    running.close()


@pytest.fixture(scope="module")
def page(stage, tmp_path_factory) -> Iterator[Browser]:
    browser = Browser(tmp_path_factory.mktemp("chromium"), stage.url)
    try:
        browser.wait("document.body?.dataset.state === 'live'", what="its controls connected")
        yield browser
    finally:
        browser.close()


def row(address: str) -> str:
    """A JS expression for the control row of `address`."""
    return f"document.querySelector('.control[data-address=\"{address}\"]')"


def choose(page: Browser, address: str, selector: str, value: str) -> None:
    """As a drag or a pick ends: the value set, then the input and change events the browser fires."""
    page.js(
        f"(() => {{ const e = {row(address)}.querySelector('{selector}'); e.value = {json.dumps(value)};"
        " e.dispatchEvent(new Event('input')); e.dispatchEvent(new Event('change')); })()"
    )


def focus(page: Browser, address: str, selector: str) -> None:
    page.js(f"(() => {{ const box = {row(address)}.querySelector('{selector}'); box.focus(); box.select(); }})()")


def test_every_live_parameter_has_a_control_of_its_kind_generated_from_the_tree(page, stage):
    kinds = page.js(
        "Object.fromEntries([...document.querySelectorAll('#groups .control')].map(r => [r.dataset.address,"
        " [...r.querySelectorAll('input, select, button')].filter(e => !e.disabled).map(e => e.type)]))"
    )
    for spec in registry().values():
        if not spec.live or spec.startup or spec.item:  # list entries (controlnets.<i>.*) exist only when configured
            continue
        widgets = kinds[f"{NS}/{spec.path.replace('.', '/')}"]
        if spec.choices:
            assert widgets == ["select-one"], spec.path
        elif spec.kind == "bool":
            assert widgets == ["checkbox"], spec.path
        elif spec.kind in ("float", "int") and spec.maximum is not None and spec.maximum - spec.minimum <= 1e6:
            assert widgets == ["range", "number"], spec.path  # a slider and a number box, with the range
        elif spec.kind in ("float", "int"):
            assert widgets == ["number"], spec.path  # the seed: a slider over 2^63 values would be useless
        else:
            assert widgets == ["text"], spec.path  # prompts, and lists as text
    commands = {address.removeprefix(NS): widgets for address, widgets in kinds.items() if address.count("/") == 2}
    assert commands["/reset"] == ["submit"] and commands["/pause"] == ["checkbox"]
    assert commands["/preset"] == ["select-one"] and commands["/transition"] == ["range", "number"]
    presets = page.js(f"[...{row(NS + '/preset')}.querySelectorAll('option')].map(o => o.value).filter(Boolean)")
    assert "offline-demo" in presets and "default" in presets  # the names in presets/
    assert page.js(f"{row(NS + '/prompt/blend')}.querySelectorAll('.rows .row').length") >= 2
    assert page.js(f"{row(NS + '/seed/blend')}.querySelectorAll('.rows .row').length") >= 2


def test_moving_the_guidance_slider_changes_the_engine_and_frames_keep_coming(page, stage):
    choose(page, NS + "/prompt/guidance", "input[type=range]", "3.5")
    stage.wait_for(lambda: stage.engine.preset.prompt.guidance == 3.5, "guidance 3.5 from the slider")
    frames = stage.engine.frame_number
    stage.wait_for(lambda: stage.engine.frame_number >= frames + 2, "two more frames")
    assert page.js("document.getElementById('picture').naturalWidth") == 128  # the MJPEG stream is showing


def test_a_prompt_typed_and_sent_with_enter_shows_on_status_prompt(page, stage):
    focus(page, NS + "/prompt/text", "input")
    page.type_text("a glass city at dawn")
    page.press_enter()
    page.wait(
        "document.getElementById('prompt-status').textContent === 'prompt: a glass city at dawn'",
        what="/dreamwire/status/prompt with the new prompt",
    )
    assert stage.engine.preset.prompt.text == "a glass city at dawn"


def test_a_change_over_udp_osc_moves_the_page_control(page, stage):
    page.js("document.activeElement.blur()")
    stage.send(f"{NS}/prompt/delta", 0.75)
    page.wait(
        f"{row(NS + '/prompt/delta')}.querySelector('input[type=number]').value === '0.75'",
        what="delta 0.75 sent over UDP",
    )
    assert page.js(f"{row(NS + '/prompt/delta')}.querySelector('input[type=range]').value") == "0.75"


def test_an_out_of_range_value_from_the_number_box_shows_the_error_and_snaps_back(page, stage):
    stage.send(f"{NS}/prompt/guidance", 2.0)
    box = f"{row(NS + '/prompt/guidance')}.querySelector('input[type=number]')"
    page.wait(f"{box}.value === '2'", what="guidance 2")
    focus(page, NS + "/prompt/guidance", "input[type=number]")
    page.type_text("42")
    page.press_enter()
    error = page.wait(f"{row(NS + '/prompt/guidance')}.querySelector('.error').textContent", what="the error")
    assert "42.0 is not accepted" in error and "float in [0, 20]" in error
    assert page.js(f"{box}.value") == "2"  # snapped back to the value in effect
    assert stage.engine.preset.prompt.guidance == 2.0


def test_picking_a_preset_applies_it_and_a_refused_one_says_why_next_to_the_picker(page, stage):
    stage.send(f"{NS}/prompt/guidance", 4.0)
    stage.wait_for(lambda: stage.engine.preset.prompt.guidance == 4.0, "guidance 4.0")
    choose(page, NS + "/preset", "select", "default")
    error = page.wait(f"{row(NS + '/preset')}.querySelector('.error').textContent", what="the preset's error")
    assert "rebuild keys" in error and "model.id" in error  # default names another model: refused over OSC
    choose(page, NS + "/preset", "select", "offline-demo")
    stage.wait_for(lambda: stage.engine.preset.prompt.guidance == 1.2, "offline-demo's guidance 1.2")
    page.wait(
        f"{row(NS + '/prompt/guidance')}.querySelector('input[type=number]').value === '1.2'",
        what="guidance back to 1.2",
    )
    page.wait(
        "document.getElementById('prompt-status').textContent === 'prompt: a photo of a cat'",
        what="offline-demo's prompt",
    )


def test_the_tempo_panel_follows_status_bpm_and_its_beat_indicator_runs(page, stage):
    stage.engine.tempo.clock.follow(bpm=97.5)  # as Link or MIDI clock move it: only /status/bpm carries it
    page.wait("document.getElementById('tempo').dataset.bpm === '97.5'", what="/status/bpm 97.5 in the panel")
    assert page.js("document.getElementById('tempo-bpm').textContent") == "97.5 bpm"
    assert page.js("document.getElementById('tempo').dataset.peers") == "0"
    assert page.js("document.querySelectorAll('#tempo-dots span').length") == stage.engine.preset.tempo.quantum
    assert page.js("document.querySelectorAll('#tempo-dots span.on').length") == 1  # the beat now, lit
    assert page.js("/^[0-9]+[.][1-4]$/.test(document.getElementById('tempo-beat').textContent)")  # bar.beat
    first = page.js("document.getElementById('tempo').dataset.dot")
    page.wait(f"document.getElementById('tempo').dataset.dot !== {json.dumps(first)}", what="the next beat lit")
    # in its own panel, not among the other status numbers
    assert "bpm" not in page.js("document.getElementById('osc-status').textContent")
    stage.send(f"{NS}/tempo/bpm", 120.0)
    page.wait("document.getElementById('tempo').dataset.bpm === '120'", what="/tempo/bpm 120 from UDP")


def test_screenshot_of_the_page(page, stage):
    focus(page, NS + "/prompt/guidance", "input[type=number]")  # an error next to its control, for the picture
    page.type_text("25")
    page.press_enter()
    page.wait(f"{row(NS + '/prompt/guidance')}.querySelector('.error').textContent", what="the error")
    page.js("document.activeElement.blur(); window.scrollTo(0, 0)")
    page.wait("document.getElementById('status').textContent.includes('fps')", what="the status line")
    shot = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    assert shot.size == (1100, 900)
    picture = shot.crop((20, 20, 200, 200)).getcolors(1 << 16)
    assert picture is not None and len(picture) > 50  # the stream is on screen, not the page's plain background
    target = os.environ.get("DREAMWIRE_PAGE_SCREENSHOT")
    if target:  # the README's screenshot: a small palette PNG
        shot.quantize(64).save(Path(target), optimize=True)
    print(json.dumps({"screenshot": target or "not kept"}))
