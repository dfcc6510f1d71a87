"""The OSC control surface over real UDP (and OSCQuery over real HTTP) on loopback, ephemeral ports, against a
LiveEngine on the tiny model."""

from __future__ import annotations

import json
import logging
import random
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from conftest import preset
from pythonosc.osc_bundle_builder import OscBundleBuilder
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

from engine.config import paths
from engine.config.presets import load_preset
from engine.config.processors import ProcessorsConfig
from engine.config.registry import registry
from engine.config.schema import ControlNetConfig, LoraConfig, OscConfig, Preset
from engine.control.coerce import osc_type
from engine.control.osc import OscTransport
from engine.control.routes import parameter_address
from engine.live.events import EngineEvent
from engine.live.loop import LiveEngine

NS = "/dreamwire"


class Feedback:
    """The controller's receiving socket (what OSC In CHOP or udpreceive is): collects what dreamwire sends."""

    def __init__(self) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 2**20)
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.seen: list[tuple[str, list[Any]]] = []  # everything received, in order
        self.pending: list[tuple[str, list[Any]]] = []  # received but not yet taken by wait()

    def wait(self, address: str, timeout: float = 10.0) -> list[Any]:
        """The arguments of the first message at `address` not taken yet (waiting for it if need be)."""
        deadline = time.perf_counter() + timeout
        while True:
            for index, (received, args) in enumerate(self.pending):
                if received == address:
                    del self.pending[index]
                    return args
            remaining = deadline - time.perf_counter()
            assert remaining > 0, f"nothing arrived at {address}; seen {self.seen[-5:]}"
            self.socket.settimeout(remaining)
            try:
                message = OscMessage(self.socket.recv(65536))
            except TimeoutError:
                continue
            self.seen.append((message.address, message.params))
            self.pending.append((message.address, message.params))

    def errors_until(self, marker: str) -> list[str]:
        """Every /dreamwire/error line up to the one for `marker` (an unknown address sent last, as a sync)."""
        lines = []
        while True:
            line = self.wait(f"{NS}/error")[0]
            if line.startswith(marker + ":"):
                return lines
            lines.append(line)

    def close(self) -> None:
        self.socket.close()


class Controller:
    """A sender (TouchDesigner, Max): one UDP socket, messages typed explicitly."""

    def __init__(self, port: int) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.target = ("127.0.0.1", port)
        self._sync = 0

    def send(self, address: str, *args: Any) -> None:
        self.socket.sendto(message(address, *args), self.target)

    def raw(self, data: bytes) -> None:
        self.socket.sendto(data, self.target)

    def sync(self, feedback: Feedback) -> list[str]:
        """Wait until everything sent before is handled; returns the error lines that came meanwhile."""
        self._sync += 1
        marker = f"/sync/{self._sync}"
        self.send(marker)
        return feedback.errors_until(marker)

    def close(self) -> None:
        self.socket.close()


def message(address: str, *args: Any) -> bytes:
    builder = OscMessageBuilder(address=address)
    for arg in args:
        if isinstance(arg, tuple):  # (type tag, value), e.g. ("T", True) or ("h", 2**40)
            builder.add_arg(arg[1], arg[0])
        else:
            builder.add_arg(arg)
    return builder.build().dgram


class Rig:
    def __init__(self, engine: LiveEngine, surface: OscTransport, feedback: Feedback) -> None:
        self.engine, self.surface, self.feedback = engine, surface, feedback
        assert surface.server is not None and surface.query is not None
        self.controller = Controller(surface.server.port)
        self.http = f"http://127.0.0.1:{surface.query.port}"
        self._loop: threading.Thread | None = None
        self._stop = threading.Event()

    def get(self, address: str, canonical: str | None = None) -> list[Any]:
        """The /get answer: the last message at the canonical address before a sync sent after the /get (echoes
        of changes applied earlier come before it, through the same feedback queue)."""
        target = NS + (canonical or address.removeprefix(NS))
        self.controller.send(f"{NS}/get", address)
        self.controller.sync(self.feedback)  # error lines from earlier sends are the caller's to check
        answers = [args for received, args in self.feedback.pending if received == target]
        self.feedback.pending = [item for item in self.feedback.pending if item[0] != target]
        assert answers, f"no answer at {target}; seen {self.feedback.seen[-5:]}"
        return answers[-1]

    def apply(self, timeout: float = 20.0) -> None:
        """Apply what was sent, as the loop would between frames, until prompt encodings have landed too."""
        deadline = time.perf_counter() + timeout
        self.engine.apply_pending_controls()
        # the drain is bounded (a frame's budget): what it left queued is applied by the next calls
        while self.engine.prompts.encoding() or self.engine.rebuilding or not self.engine.controls.empty():
            assert time.perf_counter() < deadline, "the engine did not settle"
            time.sleep(0.005)
            self.engine.apply_pending_controls()

    def start_rendering(self) -> None:
        """The engine loop on its own thread, with an unpaced pattern source and no sinks."""
        from bridges.pattern import PatternSource

        self.engine.start_io(source=PatternSource(64, 64, fps=0), sinks=[])

        def loop() -> None:
            while not self._stop.is_set():
                self.engine.apply_pending_controls()
                self.engine.step()

        self._loop = threading.Thread(target=loop, name="test-engine")
        self._loop.start()

    def wait_frames(self, count: int, timeout: float = 60.0) -> None:
        target = self.engine.frame_number + count
        deadline = time.perf_counter() + timeout
        while self.engine.frame_number < target:
            assert time.perf_counter() < deadline, "the engine stopped rendering"
            time.sleep(0.01)

    def close(self) -> None:
        self._stop.set()
        if self._loop is not None:
            self._loop.join()
        self.controller.close()
        self.surface.close()
        self.feedback.close()
        self.engine.close()


@pytest.fixture
def rig(tiny_taesd_models) -> Iterator[Any]:
    rigs: list[Rig] = []

    def make(base: Preset | None = None, **osc: Any) -> Rig:
        feedback = Feedback()
        config = preset() if base is None else base
        config.osc = OscConfig(
            **{"port": 0, "query_port": 0, "feedback": f"127.0.0.1:{feedback.port}", "status_hz": 0, **osc}
        )
        engine = LiveEngine(config, models=tiny_taesd_models)
        rigs.append(Rig(engine, OscTransport.alone(engine, config.osc, discovery=False), feedback))
        return rigs[-1]

    yield make
    for each in rigs:
        each.close()


# A new value for every live parameter, sent as a controller would type it.
LIVE_VALUES: dict[str, tuple[tuple[Any, ...], Any]] = {  # path → (OSC arguments, value expected in the engine)
    "stream.t_index_list": ((10, 20), [10, 20]),
    "stream.num_inference_steps": ((40,), 40),
    "prompt.text": (("a glass city",), "a glass city"),
    "prompt.negative": (("grainy",), "grainy"),
    "prompt.guidance": ((2.5,), 2.5),
    "prompt.delta": ((0.5,), 0.5),
    "prompt.seed": ((11,), 11),
    "filter.enabled": ((("T", True),), True),
    "filter.threshold": ((0.875,), 0.875),
    "filter.max_skip_frames": ((5,), 5),
    "ip_adapter.scale": ((0.75,), 0.75),  # kept for an adapter loaded later (tests/test_styles_control.py)
    "tempo.bpm": ((128.5,), 128.5),
    "tempo.quantum": ((3,), 3),
    "tempo.latency_ms": ((40.0,), 40.0),
    "feature_bank.enabled": ((("T", True),), True),
    "feature_bank.max_frames": ((3,), 3),
    "feature_bank.interval": ((2,), 2),
    "feature_bank.fusion_strength": ((0.5,), 0.5),
    "feature_bank.fusion_threshold": ((0.875,), 0.875),
    "tempo.quantize": (("bar",), "bar"),  # last: it times only the changes sent after it is applied
}


def test_every_live_parameter_address_changes_the_engine_value_and_get_echoes_it(rig):
    live = {path for path, spec in registry().items() if spec.live and not spec.item}  # entries: test_controlnet_*
    assert set(LIVE_VALUES) == live, "give the new live parameter a value here"
    r = rig()
    for path, (args, _) in LIVE_VALUES.items():
        r.controller.send(NS + parameter_address(path), *args)
    assert r.controller.sync(r.feedback) == []
    r.apply()
    for path, (_, expected) in LIVE_VALUES.items():
        assert paths.read(r.engine.preset, path) == expected, path
        echoed = r.get(NS + parameter_address(path))
        assert echoed == (
            expected if isinstance(expected, list) else [int(expected)] if expected is True else [expected]
        )


def test_rebuild_and_start_keys_are_refused_by_default_and_get_still_reads_them(rig):
    r = rig()
    before = r.engine.preset.model_dump()
    rebuild = [spec for spec in registry().values() if not spec.live and not spec.item]
    for spec in rebuild:
        value = {"bool": ("F", False), "int": 100, "float": 1.0}.get(spec.kind, "x")
        r.controller.send(NS + parameter_address(spec.path), value)
    errors = r.controller.sync(r.feedback)
    r.apply()
    assert len(errors) == len(rebuild)
    for spec, line in zip(rebuild, errors, strict=True):
        assert line.startswith(f"{NS}{parameter_address(spec.path)}: {spec.path} ")
        assert ("read at start" if spec.startup else "rebuild key") in line
    assert r.engine.preset.model_dump() == before
    assert r.get(f"{NS}/stream/width") == [64]
    assert r.get(f"{NS}/osc/namespace") == [NS]
    assert r.get(f"{NS}/model/vae") == ["tiny-taesd"]


# A new value for every rebuild key: accepted when the preset allows it (checked, queued; not applied here).
REBUILD_VALUES: dict[str, tuple[tuple[Any, ...], Any]] = {
    "model.id": (("/models/my-sd-turbo",), "/models/my-sd-turbo"),
    "model.vae": ((None,), None),
    "model.dtype": (("bfloat16",), "bfloat16"),
    "model.device": (("cuda:1",), "cuda:1"),
    "stream.mode": (("txt2img",), "txt2img"),
    "stream.width": ((96,), 96),
    "stream.height": ((80.0,), 80),
    "stream.frame_buffer_size": ((2,), 2),
    "stream.cfg_type": (("onetime",), "initialize"),
    "stream.use_denoising_batch": ((("F", False),), False),
    "stream.do_add_noise": ((0,), False),
    "stream.acceleration": (("tensorrt",), "tensorrt"),
    "stream.cuda_graph": ((1,), True),
    "stream.acceleration_fallback": (("none",), "none"),
    "stream.trt_min_size": ((128,), 128),
    "stream.trt_opt_size": ((768.0,), 768),
    "stream.trt_max_size": ((1536,), 1536),
    "io.input": (("pattern:?fps=10",), "pattern:?fps=10"),
    "io.outputs": (("preview:?port=0",), ["preview:?port=0"]),
    "controlnets": (
        ('[{"model": "random", "preprocessor": "none"}]',),
        [ControlNetConfig(model="random", preprocessor="none")],
    ),
    **{
        f"processors.{stage}": (
            (json.dumps([{"type": kind, "strength": 0.25}]),),
            getattr(ProcessorsConfig.model_validate({stage: [{"type": kind, "strength": 0.25}]}), stage),
        )
        for stage, kind in (
            ("image_pre", "feedback"),
            ("latent_pre", "latent_feedback"),
            ("latent_post", "latent_feedback"),
            ("image_post", "feedback"),
        )
    },
    "loras": (('[{"id": "someone/style-lora", "weight": 0.5}]',), [LoraConfig(id="someone/style-lora", weight=0.5)]),
    # the adapter's model last: it needs an encoder and an image (hub ids and a source: never files from here)
    "ip_adapter.image_encoder": (("h94/IP-Adapter/models/image_encoder",), "h94/IP-Adapter/models/image_encoder"),
    "ip_adapter.image": (("ndi:reference",), "ndi:reference"),
    "ip_adapter.image_hz": ((5,), 5.0),
    "ip_adapter.plus": ((1,), True),
    "ip_adapter.model": (
        ("h94/IP-Adapter/models/ip-adapter-plus_sd15.bin",),
        "h94/IP-Adapter/models/ip-adapter-plus_sd15.bin",
    ),
}


def test_every_rebuild_key_address_is_accepted_when_the_preset_allows_it(rig):
    rebuild = {path for path, spec in registry().items() if not spec.live and not spec.startup and not spec.item}
    assert set(REBUILD_VALUES) == rebuild, "give the new rebuild parameter a value here"
    r = rig(allow_rebuild_keys=True)
    for path, (args, _) in REBUILD_VALUES.items():
        r.controller.send(NS + parameter_address(path), *args)
    assert r.controller.sync(r.feedback) == []
    requested = r.engine.requested.snapshot()
    for path, (_, expected) in REBUILD_VALUES.items():
        assert paths.read(requested, path) == expected, path


def test_rebuild_keys_change_when_the_preset_allows_it_but_file_uris_never(rig):
    r = rig(allow_rebuild_keys=True)
    r.controller.send(f"{NS}/io/input", "file:/etc/passwd")
    r.controller.send(f"{NS}/io/outputs", "preview:?port=0", "FILE:take.mp4")
    r.controller.send(f"{NS}/stream/width", 96)
    r.controller.send(f"{NS}/stream/t_index_list", 5, 15, 30)  # another length: a rebuild, allowed here
    errors = r.controller.sync(r.feedback)
    assert len(errors) == 2 and all("file: URIs are refused over the network" in line for line in errors)
    deadline = time.perf_counter() + 30
    while r.engine.preset.stream.width != 96:
        assert time.perf_counter() < deadline, "the rebuild did not finish"
        r.apply()
        time.sleep(0.01)
    assert r.engine.pipeline.config.width == 96 and r.engine.preset.stream.t_index_list == [5, 15, 30]
    assert r.engine.preset.io.input.startswith("pattern:")


def test_aliases_streamdiffusiontd_names_and_coercion(rig):
    r = rig()
    send = r.controller.send
    send("/guidance", 1.75)
    send("/delta", 2)  # int for a float
    send("/seed", 7.0)  # an integral float for an int
    send("/negative_prompt", "low", "quality")  # Max splits unquoted text
    send("/prompt", "a", "cat", 3)
    send("/t_list", "12 24")  # one string (OSC Out DAT)
    send("/ssf", 1.0)  # 0/1 for a bool
    send("/ssf/threshold", "0.5")  # a number as text
    send("/ssf/max_skip_frames", ("h", 3))
    send("/dreamwire/guidance_scale", 1.5)  # StreamDiffusionTD's name, under the namespace too
    assert r.controller.sync(r.feedback) == []
    r.apply()
    p = r.engine.preset
    assert (p.prompt.guidance, p.prompt.delta, p.prompt.seed) == (1.5, 2.0, 7)
    assert (p.prompt.negative, p.prompt.text) == ("low quality", "a cat 3")
    assert p.stream.t_index_list == [12, 24]
    assert (p.filter.enabled, p.filter.threshold, p.filter.max_skip_frames) == (True, 0.5, 3)
    assert r.get("/guidance", "/prompt/guidance") == [1.5]


BAD: list[tuple[str, tuple[Any, ...], str]] = [
    (f"{NS}/prompt/guidance", (99.0,), "prompt.guidance: 99.0 is not accepted"),
    (f"{NS}/prompt/guidance", (), "expects 1 argument"),
    (f"{NS}/prompt/guidance", (1.0, 2.0), "expects 1 argument"),
    (f"{NS}/prompt/guidance", ("loud",), "expects a number, got the text 'loud'"),
    (f"{NS}/prompt/seed", (7.5,), "expects a whole number, got 7.5"),
    (f"{NS}/prompt/seed", (-1,), "prompt.seed: -1 is not accepted"),
    (f"{NS}/filter/enabled", (0.5,), "expects 0 or 1"),
    (f"{NS}/filter/threshold", (float("nan"),), "finite"),
    (f"{NS}/stream/t_index_list", (30, 10), "strictly ascending"),
    (f"{NS}/stream/t_index_list", (1, 2, 3), "would rebuild the pipeline"),
    (f"{NS}/prompt/text", (b"\x00\x01",), "expects text"),
    (f"{NS}/nope", (1,), "unknown address"),
    ("/nope", (), "unknown address"),
    ("/controlnets", ("[{}]",), "entry 0: model_id must be a non-empty text"),
    ("/fx/blur", (1.0,), "is mapped only for feedback_loop"),
    (f"{NS}/model/id", ("tiny",), "model.id is a rebuild key"),
    (f"{NS}/io/input", ("file:/etc/passwd",), "io.input is a rebuild key"),
    (f"{NS}/osc/allow", ("10.0.0.1",), "osc.allow is read at start"),
    (f"{NS}/preset", ("../x",), "never a path"),
    (f"{NS}/preset", ("/etc/passwd",), "never a path"),
    ("/preset", ("presets/default",), "never a path"),
    ("/preset", ("nonexistent",), "unknown preset 'nonexistent'"),
    ("/preset", ("default",), "changes rebuild keys model.id"),
    ("/prompt/blend", ("a", 0.5, "b"), "method 'b' is unknown"),
    ("/prompt/blend", (0.5,), "has no text before it"),
    ("/prompt/blend", ("a", -1.0), "non-negative"),
    ("/seed/blend", (1,), "pairs"),
    ("/seed/blend", (1, 0.5, -3, 0.5), "prompt.seed: -3"),
    ("/prompt_list", ("not json",), "expects a JSON list"),
    ("/seed_list", ("[[1, 0.5], [2]]",), "pairs"),
    ("/strength", (1.5,), "out of range [0, 1]"),
    ("/transition", (-1.0,), "not a number in [0, 3600]"),
    ("/transition/frames", (1.5,), "whole number"),
    ("/get", ("/nope",), "/nope: unknown address"),
    ("/get", ("/reset",), "is a command"),
    ("/pause", (2,), "expects 0 or 1"),
]


def test_bad_values_unknown_addresses_and_refused_keys_answer_on_error_and_keep_the_old_value(rig, caplog):
    r = rig()
    before, requested = r.engine.preset.model_dump(), r.engine.requested.snapshot().model_dump()
    for address, args, _ in BAD:
        r.controller.send(address, *args)
    with caplog.at_level(logging.WARNING, logger="engine.control.surface"):
        errors = r.controller.sync(r.feedback)
    r.apply()
    assert len(errors) == len(BAD)
    for (address, _, expected), line in zip(BAD, errors, strict=True):
        assert line.startswith(address + ": ") and expected in line, (line, expected)
        assert "\n" not in line
    assert r.engine.preset.model_dump() == before
    assert r.engine.requested.snapshot().model_dump() == requested
    assert not r.engine.paused
    logged = [rec.getMessage() for rec in caplog.records]
    assert sum(line.startswith("refused /") for line in logged) >= 20  # one log line each, throttled at 20 a second


def test_commands_pause_play_reset_transition_blends_strength(rig):
    r = rig()
    send = r.controller.send
    send("/pause")
    assert r.controller.sync(r.feedback) == []
    r.apply()
    assert r.engine.paused
    send("/play")
    send("/transition", 0.5)
    send("/guidance", 3.0)  # now a 0.5 s transition
    send("/transition", 0.0)
    send("/strength", 0.5)  # a cut again; [16, 32] → 2 steps from index 24
    send("/prompt/blend", "a", "forest", 0.7, "a", "city", 0.3, "linear")
    send("/seed/blend", 2, 0.5, 7, 0.5)
    send("/prompt_list", '[["a forest", 1.0], ["a city", 1.0]]')
    send("/seed_list", "[[3, 0.25], [4, 0.75]]")
    send("/reset", 0)  # a button's release: ignored
    send("/get_status")
    assert r.controller.sync(r.feedback) == []
    assert r.feedback.wait(f"{NS}/status") == ["paused"]  # /play not applied yet when it was asked
    r.apply()
    assert not r.engine.paused
    assert "guidance" in r.engine.transitions and r.engine.pipeline.guidance < 3.0  # morphing over 0.5 s
    assert r.engine.preset.prompt.guidance == 3.0
    assert r.engine.preset.stream.t_index_list == [24, 37]
    assert r.get("/strength") == [pytest.approx(0.5)]


def test_preset_by_name_changes_live_keys_live(rig):
    base = load_preset("offline-demo", ["prompt.text=something else", "prompt.guidance=2.0", "io.outputs=[]"])
    r = rig(base)
    r.controller.send(f"{NS}/preset", "offline-demo")
    assert r.controller.sync(r.feedback) == []
    r.apply()
    demo = load_preset("offline-demo")
    assert (r.engine.preset.prompt.text, r.engine.preset.prompt.guidance) == (demo.prompt.text, demo.prompt.guidance)


def test_engine_events_are_echoed_at_their_canonical_address(rig):
    r = rig()
    emit = r.engine.events.emit
    emit(EngineEvent("applied", "prompt.guidance", 2.0))
    emit(EngineEvent("applied", "filter.enabled", True))
    emit(EngineEvent("applied", "stream.t_index_list", [10, 20]))
    emit(EngineEvent("applied", "prompt.text", "a glass city"))
    emit(EngineEvent("error", "prompt.text", message="prompt 'x' could not be encoded"))
    emit(EngineEvent("applied", "prompt.blend", (("a", 0.5), ("b", 0.5))))
    assert r.feedback.wait(f"{NS}/prompt/guidance") == [2.0]
    assert r.feedback.wait(f"{NS}/filter/enabled") == [1]
    assert r.feedback.wait(f"{NS}/stream/t_index_list") == [10, 20]
    assert r.feedback.wait(f"{NS}/prompt/text") == ["a glass city"]
    assert r.feedback.wait(f"{NS}/status/prompt") == ["a glass city"]
    assert r.feedback.wait(f"{NS}/error") == [f"{NS}/prompt/text: prompt 'x' could not be encoded"]
    assert r.feedback.wait(f"{NS}/status/prompt") == ["a:0.5 | b:0.5"]


def test_status_burst_and_numeric_status_at_status_hz(rig):
    r = rig(status_hz=20)
    r.start_rendering()
    r.wait_frames(3)
    fps = r.feedback.wait(f"{NS}/status/fps")
    frame = r.feedback.wait(f"{NS}/status/frame")
    while frame[0] < 3:  # the first bursts may predate the first frames
        frame = r.feedback.wait(f"{NS}/status/frame")
    assert isinstance(fps[0], float) and isinstance(frame[0], int)
    assert r.feedback.wait(f"{NS}/status/malformed") == [0]
    r.controller.send("/status")
    assert r.feedback.wait(f"{NS}/status/latency_ms")[0] > 0
    addresses = {address for address, _ in r.feedback.seen}
    assert f"{NS}/status/prompt" in addresses and f"{NS}/status/power_w" not in addresses  # unknown: not sent


def test_a_bundle_timestamped_10_s_ahead_does_not_delay_the_next_message(rig):
    r = rig()
    bundle = OscBundleBuilder(time.time() + 10.0)
    bundle.add_content(_built(f"{NS}/prompt/guidance", 3.5))
    r.controller.raw(bundle.build().dgram)
    start = time.perf_counter()
    assert r.get(f"{NS}/prompt/seed") == [3]
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, f"the server slept {elapsed:.1f} s on a future time tag"
    r.apply()
    assert r.engine.preset.prompt.guidance == 3.5  # handled at once, not in 10 s


def _built(address: str, *args: Any) -> OscMessage:
    builder = OscMessageBuilder(address)
    for arg in args:
        builder.add_arg(arg)
    return builder.build()


def test_a_burst_of_2000_messages_last_value_wins_and_the_engine_keeps_rendering(rig):
    r = rig()
    r.start_rendering()
    r.wait_frames(2)
    values = [round(0.5 + 0.005 * i, 3) for i in range(2000)]
    frames_before, start = r.engine.frame_number, time.perf_counter()
    for i, value in enumerate(values):
        r.controller.send(f"{NS}/prompt/guidance", value)
        if i % 100 == 99:  # about 2,000 a second; a little air for the receive buffer of a loaded machine
            time.sleep(max(0.0, start + (i + 1) / 2400 - time.perf_counter()))
    sent_seconds = time.perf_counter() - start
    last = float(np.float32(values[-1]))  # OSC floats are 32-bit
    deadline = time.perf_counter() + 30
    while r.engine.preset.prompt.guidance != last:
        assert time.perf_counter() < deadline, f"last value {last} never applied ({r.engine.preset.prompt.guidance})"
        time.sleep(0.01)
    frames_during = r.engine.frame_number - frames_before
    print(f"2000 messages sent in {sent_seconds:.2f} s; {frames_during} frames rendered meanwhile")
    assert sent_seconds < 3.0  # paced to about 0.85 s; the bound leaves room for a loaded machine
    assert r.surface.server is not None and r.surface.server.datagrams == 2000
    assert r.engine.status()["osc_malformed"] == 0
    r.wait_frames(3)  # and it goes on rendering
    assert r.engine.pipeline.cfg.guidance == pytest.approx(last)


def _fuzz_datagrams(count: int, rng: random.Random) -> tuple[list[bytes], int]:
    """Random, truncated and wrongly typed datagrams; returns them and how many are malformed for sure."""
    valid = [
        message(f"{NS}/prompt/guidance", 1.5),
        message(f"{NS}/prompt/text", "a long prompt about a forest of glass"),
        message("/t_list", 10, 20),
        message(f"{NS}/prompt/blend", "a", 0.5, "b", 0.5),
        _bundle(message(f"{NS}/filter/threshold", 0.9), message("/guidance", 1.1)),
    ]
    datagrams, sure = [], 0
    for i in range(count):
        kind = i % 4
        if kind == 0:  # random bytes that are neither a message nor a bundle
            data = bytes([rng.choice(b"abcXYZ\x00\xff")]) + rng.randbytes(rng.randrange(0, 200))
            sure += 1
        elif kind == 1:  # a valid message or bundle cut short
            base = rng.choice(valid)
            data = base[: rng.randrange(0, len(base))]
        elif kind == 2:  # wrong (unsupported) type tags with plausible payloads
            tags = "," + "".join(rng.choice("xZcSIe?!") for _ in range(rng.randrange(1, 4)))
            data = _padded(f"{NS}/prompt/guidance") + _padded(tags) + rng.randbytes(4 * rng.randrange(0, 3))
            sure += 1
        else:  # random bytes after a plausible start
            data = rng.choice([b"/", b"#bundle\x00", b"/dreamwire/"]) + rng.randbytes(rng.randrange(0, 120))
        datagrams.append(data)
    return datagrams, sure


def _padded(text: str) -> bytes:
    data = text.encode() + b"\x00"
    return data + b"\x00" * (-len(data) % 4)


def _bundle(*messages: bytes) -> bytes:
    body = b"".join(struct.pack(">i", len(m)) + m for m in messages)
    return b"#bundle\x00" + struct.pack(">Q", 1) + body


def test_fuzz_10000_datagrams_the_server_stays_up_and_the_engine_keeps_rendering(rig):
    r = rig()
    assert r.surface.server is not None
    r.start_rendering()
    r.wait_frames(2)
    before = r.engine.frame_number
    datagrams, sure = _fuzz_datagrams(10_000, random.Random(8))
    for start in range(0, len(datagrams), 500):
        for data in datagrams[start : start + 500]:
            r.controller.raw(data)
        deadline = time.perf_counter() + 30  # paced: nothing lost to a full receive buffer, so the counts are exact
        while r.surface.server.datagrams < start + 500:
            assert time.perf_counter() < deadline, "the server stopped reading"
            time.sleep(0.005)
    status = r.engine.status()
    print(f"fuzz: {status['osc_malformed']} of 10000 datagrams malformed ({sure} by construction)")
    assert status["osc_datagrams"] == 10_000
    assert sure <= status["osc_malformed"] <= 10_000
    assert r.get(f"{NS}/prompt/seed") == [3]  # it answers the next valid message
    r.controller.send(f"{NS}/prompt/guidance", 2.25)
    r.controller.sync(r.feedback)
    r.wait_frames(2)
    assert r.engine.frame_number > before and r.engine.preset.prompt.guidance == 2.25


def test_allow_list_refuses_other_senders(rig):
    r = rig(allow=["10.9.8.7"])
    r.controller.send(f"{NS}/prompt/guidance", 4.0)
    deadline = time.perf_counter() + 10
    while r.engine.status()["osc_refused"] < 1:
        assert time.perf_counter() < deadline
        time.sleep(0.01)
    r.apply()
    assert r.engine.preset.prompt.guidance == 1.5


def test_non_loopback_bind_is_a_warning_naming_the_port(monkeypatch, caplog):
    import bridges.osc_server as osc_server

    monkeypatch.setattr(osc_server, "is_loopback", lambda host: False)
    with caplog.at_level(logging.WARNING):
        server = osc_server.OscServer("127.0.0.1", 0, lambda *a: None)
    server.close()
    assert any(f"port {server.port}" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


def test_a_port_in_use_is_one_line(tiny_taesd_models):
    from bridges.osc_server import OscServer
    from engine.core.errors import DreamwireError

    first = OscServer("127.0.0.1", 0, lambda *a: None)
    try:
        with pytest.raises(DreamwireError, match=rf"OSC: cannot listen on UDP 127.0.0.1:{first.port}"):
            OscServer("127.0.0.1", first.port, lambda *a: None)
    finally:
        first.close()


# ---- OSCQuery ---------------------------------------------------------------------------------------------


def _http(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read()
            return response.status, json.loads(body) if body else None
    except urllib.error.HTTPError as error:
        return error.code, None


def test_oscquery_tree_lists_every_parameter_with_type_and_range(rig):
    r = rig()
    status, tree = _http(r.http + "/")
    assert status == 200 and tree["FULL_PATH"] == "/"
    for spec in registry().values():
        if spec.item:
            continue  # the entries of a list section the preset has (none here): tests/test_controlnet_control.py
        node = tree["CONTENTS"]["dreamwire"]
        for part in spec.path.split("."):
            node = node["CONTENTS"][part]
        assert node["FULL_PATH"] == NS + parameter_address(spec.path)
        assert node["TYPE"] == osc_type(spec, paths.read(r.engine.preset, spec.path))
        assert node["ACCESS"] == (3 if spec.live else 1)
        assert node["DESCRIPTION"].startswith(spec.doc)
        if spec.choices:
            assert node["RANGE"] == [{"VALS": list(spec.choices)}]
        elif spec.kind != "bool" and spec.minimum is not None:
            assert node["RANGE"] == [{"MIN": spec.minimum, "MAX": spec.maximum}]
    commands = tree["CONTENTS"]["dreamwire"]["CONTENTS"]
    assert commands["reset"]["ACCESS"] == 2 and commands["prompt"]["CONTENTS"]["blend"]["TYPE"] == "sf"
    assert commands["status"]["CONTENTS"]["fps"]["ACCESS"] == 1


def test_oscquery_host_info_value_queries_and_errors(rig):
    r = rig()
    assert r.surface.server is not None
    status, info = _http(r.http + "/anything?HOST_INFO")
    assert status == 200
    assert info == {
        "NAME": "dreamwire",
        "OSC_IP": "127.0.0.1",
        "OSC_PORT": r.surface.server.port,
        "OSC_TRANSPORT": "UDP",
        "EXTENSIONS": {"ACCESS": True, "VALUE": True, "RANGE": True, "DESCRIPTION": True, "LISTEN": True},
    }
    assert _http(r.http + f"{NS}/prompt/guidance?VALUE") == (200, {"VALUE": [1.5]})
    r.controller.send(f"{NS}/prompt/guidance", 3.25)
    r.controller.send("/t_list", 8, 30)
    r.controller.sync(r.feedback)
    r.apply()
    assert _http(r.http + f"{NS}/prompt/guidance?VALUE") == (200, {"VALUE": [3.25]})
    assert _http(r.http + f"{NS}/stream/t_index_list")[1]["VALUE"] == [8, 30]
    assert _http(r.http + f"{NS}/filter/threshold?RANGE") == (200, {"RANGE": [{"MIN": 0, "MAX": 1}]})
    assert _http(r.http + f"{NS}/nope")[0] == 404
    assert _http(r.http + "/dreamwire/prompt/guidance/deeper?VALUE")[0] == 404
    assert _http(r.http + f"{NS}/prompt/guidance?BOGUS")[0] == 400
    assert _http(r.http + f"{NS}/reset?VALUE")[0] == 204  # a command has no value


def test_oscquery_without_a_namespace_and_the_streamdiffusiontd_preset(rig):
    sdtd = load_preset("osc-streamdiffusiontd")
    assert (sdtd.osc.port, sdtd.osc.feedback, sdtd.osc.namespace) == (8247, "127.0.0.1:8248", "")
    r = rig(namespace="")
    _, tree = _http(r.http + "/")
    assert tree["CONTENTS"]["prompt"]["CONTENTS"]["guidance"]["FULL_PATH"] == "/prompt/guidance"
    r.controller.send("/guidance_scale", 1.25)
    r.controller.send("/get", "/guidance_scale")
    assert r.feedback.wait("/prompt/guidance") == [1.5]  # asked before the engine applied it
    r.controller.send("/nope")
    assert r.feedback.wait("/error") == [
        "/nope: unknown address (the address space: README, or GET / on the OSCQuery port)"
    ]


def test_mdns_discovery_is_off_without_zeroconf(monkeypatch, caplog):
    import sys

    from bridges.oscquery import advertise

    monkeypatch.setitem(sys.modules, "zeroconf", None)
    with caplog.at_level(logging.INFO):
        assert advertise("dreamwire", "127.0.0.1", 9000, 9000) is None
    assert [r.getMessage() for r in caplog.records if "mDNS" in r.getMessage()] == [
        "OSCQuery discovery (mDNS) is off: pip install 'dreamwire[oscquery]' to advertise it"
    ]


def test_mdns_advertises_oscjson_and_osc_udp():
    zeroconf = pytest.importorskip("zeroconf", reason="zeroconf (the oscquery extra) is not installed")
    from bridges.oscquery import advertise

    name = f"dreamwire-test-{random.randrange(10**6)}"
    advertisement = advertise(name, "127.0.0.1", 9123, 9124)
    assert advertisement is not None
    browser = zeroconf.Zeroconf(interfaces=["127.0.0.1"])
    try:
        found = {}
        deadline = time.perf_counter() + 10
        for kind in ("_oscjson._tcp.local.", "_osc._udp.local."):
            while kind not in found and time.perf_counter() < deadline:
                info = browser.get_service_info(kind, f"{name}.{kind}", timeout=1000)
                if info is not None:
                    found[kind] = info.port
        if not found:
            pytest.skip("no multicast on this machine's loopback: mDNS cannot be checked here")
        assert found == {"_oscjson._tcp.local.": 9123, "_osc._udp.local.": 9124}
    finally:
        browser.close()
        advertisement.close()


# ---- dreamwire run --------------------------------------------------------------------------------------------


def _run_command(*overrides: str) -> list[str]:
    import sys

    command = [sys.executable, "-m", "engine.commands.cli", "run", "--preset", "offline-demo"]
    command += ["--input", "pattern:?width=64&height=64&fps=30", "--output", "preview:?port=0"]
    for item in ("stream.width=64", "stream.height=64", "osc.status_hz=0", *overrides):
        command += ["--set", item]
    return command


def test_dreamwire_run_serves_osc_by_default_and_stops_cleanly():
    import re
    import signal
    import subprocess

    feedback = Feedback()
    process = subprocess.Popen(
        _run_command("osc.port=0", f"osc.feedback=127.0.0.1:{feedback.port}"), stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stderr is not None
        port = None
        for line in process.stderr:
            found = re.search(r"OSC listening on 127\.0\.0\.1:(\d+) \(UDP\)", line)
            port = int(found.group(1)) if found else port
            if "running:" in line:
                break
        assert port is not None, "no 'OSC listening on' line"
        controller = Controller(port)
        controller.send(f"{NS}/prompt/guidance", 99.0)
        assert "prompt.guidance: 99.0 is not accepted" in feedback.wait(f"{NS}/error", timeout=30)[0]
        controller.send(f"{NS}/prompt/guidance", 2.0)
        deadline = time.perf_counter() + 30
        value = None
        while value != [2.0]:  # applied at a frame boundary of the running engine
            assert time.perf_counter() < deadline, f"guidance never became 2.0 ({value})"
            controller.send(f"{NS}/get", "/guidance")
            value = feedback.wait(f"{NS}/prompt/guidance", timeout=30)
            time.sleep(0.1)
        controller.close()
        process.send_signal(signal.SIGTERM)
        rest = process.communicate(timeout=30)[1]
    finally:
        if process.poll() is None:
            process.kill()
        feedback.close()
    assert process.returncode == 0, rest
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(("127.0.0.1", port))  # the OSC port is free again


def test_dreamwire_run_with_its_osc_port_taken_is_one_line_and_exit_2():
    import subprocess

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        done = subprocess.run(_run_command(f"osc.port={port}"), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
    assert errors == [f"ERROR dreamwire: OSC: cannot listen on UDP 127.0.0.1:{port} (Address already in use)"]
