"""Every change sent to the live engine is applied or refused, none lost, none fatal (issue 7's defects 1-3, 5).

Each test drives the engine synchronously (apply_pending_controls / process / step on this thread) with the real
encoder and rebuild threads, on the tiny model.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
import torch
from conftest import SIZE, clip

from engine.core.errors import DreamwireError
from engine.core.frames import Frame
from engine.live.blending import blend_embeddings
from engine.live.events import EngineEvent
from engine.live.loop import LiveEngine
from engine.pipeline.stream import StreamPipeline


class Events:
    """Records the engine's events (a listener) and drives the engine until a request's outcome arrives."""

    def __init__(self, live: LiveEngine) -> None:
        self.live = live
        self.all: list[EngineEvent] = []
        live.add_listener(self.all.append)

    def of(self, request_id: int) -> list[EngineEvent]:
        return [e for e in self.all if getattr(e, "request_id", None) == request_id]

    def settle(self, *request_ids: int, timeout: float = 20.0, frames: bool = False) -> None:
        """apply_pending_controls (and a frame each time, if `frames`) until each request has its event."""
        deadline = time.perf_counter() + timeout
        images = clip(4)
        while True:
            self.live.apply_pending_controls()
            if all(self.of(rid) for rid in request_ids):
                return
            assert time.perf_counter() < deadline, f"no outcome for {request_ids}: {self.all}"
            if frames:
                self.live.process([Frame(images[self.live.frame_number % 4], 0, time.perf_counter())])
            else:
                time.sleep(0.005)


def slow_encoder(live: LiveEngine, seconds: float = 0.3) -> None:
    encode = live.encoder._encode_fn

    def slow(text: str) -> torch.Tensor:
        time.sleep(seconds)
        return encode(text)

    live.encoder._encode_fn = slow


def drive_until(live: LiveEngine, done, timeout: float = 20.0) -> None:
    """The loop's apply + a frame, until done() (works on any engine version: no events needed)."""
    deadline = time.perf_counter() + timeout
    images = clip(4)
    while not done():
        assert time.perf_counter() < deadline, "the engine never got there"
        live.apply_pending_controls()
        live.process([Frame(images[live.frame_number % 4], 0, time.perf_counter())])


# ---- defect 1: a prompt change sent while another is encoding is lost ----------------------------------------


def test_the_newest_prompt_wins_over_one_still_encoding(engine):
    live = engine()
    slow_encoder(live)
    live.set("prompt.text", "a red door")
    live.apply_pending_controls()
    live.process([Frame(clip(1)[0], 0, time.perf_counter())])
    time.sleep(0.1)  # "a red door" is being encoded now
    live.set("prompt.text", "a blue whale")
    expected = live.models.encode_prompt("a blue whale")
    drive_until(live, lambda: torch.equal(live.pipeline.cond, expected) and live.preset.prompt.text == "a blue whale")
    for _ in range(10):  # and it stays: the older result was dropped, not applied late
        live.apply_pending_controls()
        time.sleep(0.05)
    assert torch.equal(live.pipeline.cond, expected)


def test_a_blend_sent_while_a_text_encodes_gets_the_blend(engine):
    live = engine()
    slow_encoder(live)
    live.set("prompt.text", "a red door")
    live.apply_pending_controls()
    time.sleep(0.1)
    live.blend_prompts([("a forest", 0.5), ("a city", 0.5)], method="linear")
    encode = live.models.encode_prompt
    expected = blend_embeddings([encode("a forest"), encode("a city")], [0.5, 0.5], "linear")
    drive_until(live, lambda: torch.equal(live.pipeline.cond, expected))


def test_every_request_ends_in_one_event_and_a_superseded_one_is_told(engine):
    live = engine()
    events = Events(live)
    slow_encoder(live, 0.2)
    first = live.set("prompt.text", "a red door")
    live.apply_pending_controls()
    time.sleep(0.05)
    second = live.set("prompt.text", "a blue whale")
    guidance = live.set("prompt.guidance", 2.0, frames=3)
    events.settle(first, second, guidance)
    time.sleep(0.3)
    live.apply_pending_controls()
    assert [e.kind for e in events.of(first)] == ["superseded"]
    assert "'a red door'" in events.of(first)[0].message and "superseded" in events.of(first)[0].message
    assert events.of(second) == [EngineEvent("applied", "prompt.text", "a blue whale", request_id=second)]
    assert events.of(guidance) == [EngineEvent("applied", "prompt.guidance", 2.0, request_id=guidance)]


# ---- defect 2: a value accepted when sent can fail when applied -------------------------------------------------


@pytest.mark.parametrize(
    ("send", "shown"),
    [
        (lambda live: live.set("prompt.guidance", 1.5, frames=2.5), "2.5"),
        (lambda live: live.set("prompt.guidance", 1.5, seconds=math.nan), "nan"),
        (lambda live: live.blend_prompts([("a", math.nan), ("b", 1.0)]), "nan"),
        (lambda live: live.blend_seeds([(1, 1.0), (2, math.inf)]), "inf"),
        (lambda live: live.blend_seeds([(1, 1e308), (2, 1e308)]), "1e+308"),  # the sum overflows
        (lambda live: live.blend_prompts([]), "at least one"),
        (lambda live: live.set("stream.num_inference_steps", 60), "60"),
        (lambda live: live.set("stream.width", 100), "100"),  # not a multiple of the VAE factor 8
        (lambda live: live.set("filter.threshold", 0.5, seconds=1.0), "cannot change over a duration"),
        (lambda live: live.pause("yes"), "'yes'"),
    ],
)
def test_what_cannot_be_applied_is_refused_when_sent(engine, send, shown):
    live = engine()
    with pytest.raises(DreamwireError) as info:
        send(live)
    assert shown in str(info.value) and "\n" not in str(info.value)
    live.apply_pending_controls()  # nothing was queued, so nothing can fail here
    assert live.controls.empty()


def test_a_failing_prompt_result_or_transition_is_an_event_not_the_end(engine):
    live = engine()
    events = Events(live)
    encode = live.encoder._encode_fn
    live.encoder._encode_fn = lambda text: encode(text)[:, :, :8] if text == "wrong shape" else encode(text)
    before = live.pipeline.cond.clone()
    bad = live.set("prompt.text", "wrong shape")
    events.settle(bad)
    assert events.of(bad)[0].kind == "error" and "shape" in events.of(bad)[0].message
    assert torch.equal(live.pipeline.cond, before) and live.preset.prompt.text == "a red fox"

    moving = live.set("prompt.guidance", 3.0, frames=5)
    live.apply_pending_controls()

    def broken(guidance: float, delta: float) -> None:
        raise RuntimeError("device lost")

    live.pipeline.set_guidance = broken  # the next transition step fails
    live.process([Frame(clip(1)[0], 0, time.perf_counter())])
    live.apply_pending_controls()
    assert [e.kind for e in events.of(moving)] == ["applied", "error"]
    assert "RuntimeError: device lost" in events.of(moving)[1].message
    assert len(live.transitions) == 0  # stopped where it was; the loop goes on
    live.process([Frame(clip(1)[0], 0, time.perf_counter())])


def test_render_refuses_more_steps_than_the_scheduler_takes_in_one_line(tmp_path, caplog):
    from engine.commands.cli import main

    code = main(["render", "--preset", "offline-demo", "--frames", "1", "--output", str(tmp_path / "o.npy"),
                 "--set", "stream.mode=txt2img", "--set", "stream.num_inference_steps=51"])  # fmt: skip
    assert code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "stream.num_inference_steps: 51" in errors[0] and "50" in errors[0]


# ---- defect 3: changes made during a rebuild are undone when it finishes ---------------------------------------


@pytest.fixture
def gated_rebuild(monkeypatch):
    """Holds every pipeline build on the rebuild thread until the returned event is set."""
    gate = threading.Event()
    prepared = StreamPipeline.prepared.__func__

    def held(cls, *args, **kwargs):
        if threading.current_thread().name.startswith("dreamwire-rebuild"):
            assert gate.wait(30)
        return prepared(cls, *args, **kwargs)

    monkeypatch.setattr(StreamPipeline, "prepared", classmethod(held))
    yield gate
    gate.set()


@pytest.mark.parametrize("another_model", [False, True])
def test_changes_sent_during_a_rebuild_reach_the_new_pipeline(engine, gated_rebuild, another_model):
    live = engine()
    live.set("stream.width", 128)
    if another_model:
        live.set("model.vae", None)  # another VAE: the models are loaded again
    live.apply_pending_controls()
    live.set("prompt.text", "a blue whale")
    live.set("prompt.guidance", 2.0)
    live.set("prompt.seed", 9)
    for _ in range(5):
        live.apply_pending_controls()
        time.sleep(0.05)
    gated_rebuild.set()
    drive_until(live, lambda: live.pipeline.config.width == 128 and live.preset.prompt.text == "a blue whale")
    assert (live.preset.prompt.guidance, live.preset.prompt.seed) == (2.0, 9)
    assert live.pipeline.guidance == 2.0
    assert torch.equal(live.pipeline.cond, live.models.encode_prompt("a blue whale"))
    assert torch.equal(live.pipeline.noise, live.pipeline.noise_for_seed(9))
    assert live.pipeline.noise.shape[-1] == 128 // 8
    assert (live.preset.model.vae is None) == another_model


def test_a_newer_rebuild_carries_the_older_requests_and_drops_its_result(engine, gated_rebuild):
    live = engine()
    events = Events(live)
    width = live.set("stream.width", 128)
    live.apply_pending_controls()
    time.sleep(0.1)  # the first build is running (held)
    height = live.set("stream.height", 96)
    wider = live.set("stream.width", 80)
    live.apply_pending_controls()
    gated_rebuild.set()
    events.settle(height, wider)
    assert (live.pipeline.config.width, live.pipeline.config.height) == (80, 96)
    assert events.of(width)[0].kind == "superseded" and "superseded by request" in events.of(width)[0].message
    assert [e.kind for e in events.of(height) + events.of(wider)] == ["applied", "applied"]
    time.sleep(0.3)
    live.apply_pending_controls()
    assert [e.kind for e in events.all if e.path == "rebuild"] == ["applied"]  # the first build's result dropped
    assert live.pipeline.config.width == 80


def test_a_failed_rebuild_is_an_error_event_and_the_value_is_no_longer_requested(engine):
    live = engine()
    events = Events(live)
    bad = live.set("model.id", "/no/such/model")
    events.settle(bad)
    assert events.of(bad)[0].kind == "error" and "model folder not found" in events.of(bad)[0].message
    assert [e.kind for e in events.all if e.path == "rebuild"] == ["error"]
    assert live.requested.snapshot().model.id == "tiny" and live.preset.model.id == "tiny"


# ---- defect 5: a slow source with frame_buffer_size > 1 never produces output -----------------------------------


def test_a_source_slower_than_the_wait_still_fills_a_batch(engine):
    from bridges.pattern import PatternSource

    live = engine(frame_buffer_size=2)
    live.start_io(source=PatternSource(SIZE, SIZE, fps=6), sinks=[])  # a frame every 0.17 s > the 0.1 s wait
    deadline = time.perf_counter() + 20
    while live.frame_number < 4:
        assert time.perf_counter() < deadline, "no step ran: the collected frames were dropped"
        live.apply_pending_controls()
        live.step()


def test_a_batch_never_mixes_frame_sizes_when_the_source_changes_size(engine):
    """Frames collected before a size change (a rebuild to another size: the source thread conforms frames to
    the stream's new size) are dropped, not stacked with the new ones (np.stack raised and ended the loop)."""
    live = engine(frame_buffer_size=2)
    small, large = clip(1)[0], np.zeros((SIZE * 2, SIZE * 2, 3), np.uint8)
    live.input_slot.put(Frame(small, 0, time.perf_counter()))
    assert live.inputs.take(2) is None  # one of two collected; the wait ran out
    live.input_slot.put(Frame(large, 1, time.perf_counter()))
    assert live.inputs.take(2) is None  # the older size is dropped: still one of two
    live.input_slot.put(Frame(large, 2, time.perf_counter()))
    frames = live.inputs.take(2)
    assert frames is not None and [frame.index for frame in frames] == [1, 2]


def test_a_reset_keeps_the_blends_in_effect_and_the_schedule(engine):
    live = engine()
    events = Events(live)
    blend = live.blend_prompts([("a forest", 0.5), ("a city", 0.5)], method="linear")
    seeds = live.blend_seeds([(4, 0.5), (5, 0.5)])
    schedule = live.set("stream.t_index_list", [5, 40])
    events.settle(blend, seeds, schedule)
    cond, noise, timesteps = live.pipeline.cond.clone(), live.pipeline.noise.clone(), live.pipeline.tables.timesteps
    for k in range(2):
        live.process([Frame(clip(2)[k], k, time.perf_counter())])
    reset = live.reset()
    events.settle(reset)
    assert events.of(reset) == [EngineEvent("applied", "reset", request_id=reset)]
    assert torch.count_nonzero(live.pipeline.x_t) == 0  # empty buffers
    assert torch.equal(live.pipeline.cond, cond) and torch.equal(live.pipeline.noise, noise)
    assert torch.equal(live.pipeline.tables.timesteps, timesteps)


def test_every_parameter_has_an_apply_handler_and_the_movable_ones_a_morph(engine):
    from typing import get_args

    from engine.config.registry import registry
    from engine.config.schema import Apply
    from engine.live.targets import MORPHS

    live = engine()
    assert set(live.changes.handlers) == set(get_args(Apply))  # one handler per apply name, no more
    assert {spec.apply for spec in registry().values()} <= set(get_args(Apply))
    # a morph is named by an apply name, or by the registry path of the one parameter it moves (a ControlNet's scale)
    assert set(MORPHS) <= set(get_args(Apply)) | {path for path, spec in registry().items() if spec.live}
