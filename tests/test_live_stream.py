"""A random stream of controls against the running engine: every change applied or refused, none lost, none fatal.

A seeded generator sends CONTROLS controls per seed (SEEDS), valid and invalid ones, at random moments (bursts
and short pauses) while the engine runs on its own thread with a slow, sometimes failing prompt encoder: values
with and without transitions (seconds and frames), prompt and seed blends, seed changes, schedule and filter
changes, pause, reset, rebuilds (size, cfg type, frame buffer, Stream Batch, an unknown model), and bursts of one
key (a fader, a text field: coalesced by the engine, the older ones superseded). Then:

- the engine thread never died, and every invalid control was refused when sent, every valid one accepted;
- every accepted request ended in exactly one event, and every error names a reason the stream provoked
  (an encoder failure, a newer request for the same thing, a rebuild of an unknown model);
- each time it goes quiet (CHECKPOINTS times per seed), every parameter equals its last applied value, and the
  pipeline's embeddings and noise equal those of a fresh prepare with that state.

DREAMWIRE_STREAM_SEEDS="1,2,3" and DREAMWIRE_STREAM_CONTROLS=5000 run other seeds or longer streams.
"""

from __future__ import annotations

import math
import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from conftest import preset

from engine.config.registry import registry
from engine.config.schema import Preset
from engine.core.errors import DreamwireError
from engine.live.blending import blend_embeddings, blend_noise
from engine.live.events import EngineEvent
from engine.live.loop import LiveEngine
from engine.live.threads import limit_torch_threads
from engine.pipeline.stream import StreamPipeline

SEEDS = tuple(int(s) for s in os.environ.get("DREAMWIRE_STREAM_SEEDS", "1,2").split(","))
CONTROLS = int(os.environ.get("DREAMWIRE_STREAM_CONTROLS", "1500"))  # per seed
CHECKPOINTS = 15  # per seed: the stream pauses (goes quiet) this many times and the state is checked each time
TEXTS = ("a red fox", "a blue whale", "a glass city", "a forest at dawn", "neon rain", "an old map")
EXPECTED_ERRORS = ("could not be encoded", "superseded by request", "rebuild failed")


@dataclass
class Sent:
    kind: str  # "set", "blend_prompts", "blend_seeds", "pause", "reset"
    args: dict[str, Any]


@dataclass
class Stream:
    """The generator: each call sends one random control and says whether it had to be accepted."""

    rng: random.Random
    live: LiveEngine
    sent: dict[int, Sent] = field(default_factory=dict)  # request id -> what was sent
    refused: int = 0
    counter: int = 0

    def text(self) -> str:
        roll = self.rng.random()
        self.counter += 1
        if roll < 0.1:
            return f"poison {self.counter}"  # accepted when sent, fails in the encoder
        if roll < 0.4:
            return f"{self.rng.choice(TEXTS)}, take {self.counter}"  # never seen: a real (slow) encode
        return self.rng.choice(TEXTS)

    def duration(self) -> dict[str, Any]:
        roll = self.rng.random()
        if roll < 0.5:
            return {}
        if roll < 0.75:
            return {"seconds": self.rng.choice([0.0, 0.05, 0.2, 0.3])}
        return {"frames": self.rng.choice([0, 1, 3, 6])}

    def bad_duration(self) -> dict[str, Any]:
        return self.rng.choice([{"frames": 2.5}, {"seconds": -1.0}, {"seconds": math.nan}, {"seconds": 1, "frames": 2}])

    def weights(self, count: int) -> list[float]:
        return [self.rng.choice([0.0, 0.25, 1.0, 2.5]) for _ in range(count - 1)] + [self.rng.uniform(0.1, 1.0)]

    def bad_weights(self, count: int) -> list[float]:
        bad = self.rng.choice([math.nan, math.inf, -1.0])
        return [bad] + [1.0] * (count - 1) if self.rng.random() < 0.8 else [0.0] * count

    def burst(self) -> None:
        """A fader or a text field: a run of valid changes of one key at once (most end superseded)."""
        r = self.rng
        path = r.choice(["prompt.guidance", "stream.t_index_list", "prompt.seed", "prompt.text"])
        for _ in range(r.randint(20, 120)):
            value: Any = {
                "prompt.guidance": lambda: round(r.uniform(0.0, 3.0), 2),
                "stream.t_index_list": lambda: sorted(r.sample(range(30), 2)),  # valid with 30 steps or more
                "prompt.seed": lambda: r.randrange(1000),
                "prompt.text": self.text,
            }[path]()
            self.sent[self.live.set(path, value)] = Sent("set", {"path": path, "value": value})

    def one(self) -> None:
        """Send one control; assert it was accepted exactly when it was valid."""
        r, choice = self.rng, self.rng.random()
        valid = True
        if choice < 0.20:
            path = r.choice(["prompt.guidance", "prompt.delta"])
            value: Any = round(r.uniform(0.0, 3.0), 2)
            if r.random() < 0.15:
                valid, value = False, r.choice([25.0, -1.0, math.nan, "loud"])
            kind, args = "set", {"path": path, "value": value, **self.duration()}
        elif choice < 0.38:
            path = r.choice(["prompt.text", "prompt.text", "prompt.negative"])
            value = self.text() if r.random() > 0.05 else 123
            valid = isinstance(value, str)
            kind, args = "set", {"path": path, "value": value, **self.duration()}
        elif choice < 0.48:
            value = r.randrange(1000) if r.random() > 0.1 else r.choice([-1, 2**64, "seven"])
            valid = isinstance(value, int) and 0 <= value < 2**63
            kind, args = "set", {"path": "prompt.seed", "value": value, **self.duration()}
        elif choice < 0.57:
            count, good = r.randint(1, 3), r.random() > 0.15
            weights = self.weights(count) if good else self.bad_weights(count)
            method = r.choice(["linear", "slerp"]) if r.random() > 0.05 else "cubic"
            valid = good and method != "cubic"
            items = [(self.text(), w) for w in weights]
            kind, args = "blend_prompts", {"items": items, "method": method, **self.duration()}
        elif choice < 0.65:
            count, good = r.randint(1, 3), r.random() > 0.15
            weights = self.weights(count) if good else self.bad_weights(count)
            items = list(zip(r.sample(range(500), count), weights, strict=True))
            kind, args = "blend_seeds", {"items": items, **self.duration()}
            valid = good
        elif choice < 0.73:
            path = r.choice(["stream.t_index_list", "stream.num_inference_steps"])
            if path == "stream.t_index_list":  # indices below 30 and at least 30 steps: valid together, always
                value = sorted(r.sample(range(30), r.choice([2, 2, 2, 2, 1, 3])))
                if r.random() < 0.15:
                    valid, value = False, r.choice([[20, 10], [], [5, 55]])
            else:
                value = r.randint(30, 50) if r.random() > 0.15 else r.choice([60, 0])
                valid = 30 <= value <= 50
            kind, args = "set", {"path": path, "value": value}
        elif choice < 0.81:
            path = r.choice(["filter.enabled", "filter.threshold", "filter.max_skip_frames"])
            value = {"filter.enabled": r.random() < 0.5, "filter.threshold": round(r.uniform(0.8, 1.0), 3)}.get(
                path, r.randint(0, 5)
            )
            extra = {}
            if r.random() < 0.1:
                valid, extra = False, {"seconds": 0.5}  # a filter cannot move over a duration
            elif r.random() < 0.1:
                valid, value = False, 1.5 if path == "filter.threshold" else -3
            kind, args = "set", {"path": path, "value": value, **extra}
        elif choice < 0.87:
            paused = r.random() < 0.4 if r.random() > 0.1 else "maybe"
            valid = isinstance(paused, bool)
            kind, args = "pause", {"paused": paused}
        elif choice < 0.90:
            kind, args = "reset", {}
        elif choice < 0.94:
            kind, args = "set", {"path": "prompt.guidance", "value": 1.5, **self.bad_duration()}
            valid = False
        elif choice < 0.975:
            path, value = r.choice([("prompt.colour", "red"), ("stream.width", 4096), ("stream.width", 65)])
            valid, kind, args = False, "set", {"path": path, "value": value}
        else:  # a rebuild in about forty controls, a few of them failing when applied (an unknown model)
            path, value = r.choice(
                [
                    ("stream.width", r.choice([64, 72])),
                    ("stream.height", r.choice([64, 72])),
                    ("stream.cfg_type", r.choice(["none", "full", "self", "initialize"])),
                    ("stream.frame_buffer_size", r.choice([1, 2])),
                    ("stream.use_denoising_batch", r.random() < 0.7),
                    ("model.id", "/no/such/model"),
                ]
            )
            kind, args = "set", {"path": path, "value": value}
        try:
            request_id = getattr(self.live, kind)(**args)
        except DreamwireError as error:
            assert not valid, f"{kind} {args} was refused: {error}"
            self.refused += 1
            return
        assert valid, f"{kind} {args} was accepted (request {request_id})"
        self.sent[request_id] = Sent(kind, args)


def slow_and_failing(encode, seed: int):
    rng = random.Random(seed)  # used by the encoder thread only

    def encode_fn(text: str) -> torch.Tensor:
        time.sleep(rng.uniform(0.0, 0.02))
        if text.startswith("poison"):
            raise RuntimeError(f"the encoder refuses {text!r}")
        return encode(text)

    return encode_fn


def wait_until_quiet(live: LiveEngine, stream: Stream, events: list[EngineEvent], timeout: float = 60.0) -> None:
    """Every accepted request has its outcome, nothing is queued, encoding, rebuilding or moving."""
    deadline = time.perf_counter() + timeout
    while True:
        answered = {e.request_id for e in list(events)}
        idle = not live.busy
        if idle and answered >= set(stream.sent):
            return
        missing = sorted(set(stream.sent) - answered)[:5]
        assert time.perf_counter() < deadline, f"not quiet: requests {missing} unanswered"
        time.sleep(0.02)


def in_one_thread(function, *args):
    """Run on a thread with one intra-op thread, as the encoder does, so reductions add up in the same order."""
    out: list[Any] = []
    thread = threading.Thread(target=lambda: (limit_torch_threads(1), out.append(function(*args))))
    thread.start()
    thread.join()
    return out[0]


@pytest.mark.parametrize("seed", SEEDS)
def test_a_random_stream_of_controls(tiny_taesd_models, seed):
    settings = preset()
    settings.io.input = "pattern:?width=64&height=64&fps=100"
    live = LiveEngine(settings, models=tiny_taesd_models)
    initial = live.preset.model_copy(deep=True)
    events: list[EngineEvent] = []
    live.add_listener(events.append)
    live.encoder._encode_fn = slow_and_failing(live.encoder._encode_fn, seed)
    crashed: list[BaseException] = []

    def engine_thread() -> None:
        limit_torch_threads(1)  # a loaded CI machine: keep the engine from spinning on a second core
        try:
            live.run()
        except BaseException as error:
            crashed.append(error)
            raise

    thread = threading.Thread(target=engine_thread, name="dreamwire-engine-under-test")
    thread.start()
    stream = Stream(random.Random(seed), live)
    start = time.perf_counter()
    try:
        for _ in range(CHECKPOINTS):
            for _ in range(CONTROLS // CHECKPOINTS):
                if stream.rng.random() < 0.3:
                    time.sleep(stream.rng.uniform(0.0, 0.01))  # else a burst
                stream.burst() if stream.rng.random() < 0.02 else stream.one()
                assert thread.is_alive(), f"the engine thread died: {crashed}"
            resume = live.pause(False)  # frame-counted transitions need frames to finish
            stream.sent[resume] = Sent("pause", {"paused": False})
            wait_until_quiet(live, stream, events)
            # Quiet: the engine only makes frames now, which change neither the values nor the tensors checked.
            expected = check_parameters(initial, live, stream, events)
            check_tensors(live, stream, events, expected)
        frames_before = live.frame_number
        deadline = time.perf_counter() + 30
        while live.frame_number < frames_before + 2:  # and it is still making frames
            assert time.perf_counter() < deadline and thread.is_alive(), crashed
            time.sleep(0.01)
    finally:
        live.stop()
        thread.join(30)
    assert not crashed and not thread.is_alive()
    elapsed = time.perf_counter() - start
    errors = {reason: sum(reason in e.message for e in events) for reason in EXPECTED_ERRORS}
    print(
        f"seed {seed}: {CONTROLS} controls ({len(stream.sent)} accepted, {stream.refused} refused), "
        f"{live.frame_number} frames, {sum(e.path == 'rebuild' for e in events)} rebuilds, {CHECKPOINTS} "
        f"checkpoints in {elapsed:.1f} s; errors {errors}"
    )
    check_outcomes(stream, events)


def check_outcomes(stream: Stream, events: list[EngineEvent]) -> None:
    """One event per accepted request; each error provoked by the stream; per path, applied in request order."""
    outcomes: dict[int, list[EngineEvent]] = {}
    for event in events:
        if event.request_id is not None:
            outcomes.setdefault(event.request_id, []).append(event)
    assert set(outcomes) == set(stream.sent)
    for got in outcomes.values():
        assert len(got) == 1, got
        if got[0].kind == "error":
            assert any(reason in got[0].message for reason in EXPECTED_ERRORS), got[0]
            assert "\n" not in got[0].message
    last: dict[str, int] = {}
    for event in events:
        if event.kind == "applied" and event.request_id is not None:
            assert event.request_id > last.get(event.path, 0), f"{event} applied after a newer request"
            last[event.path] = event.request_id


def check_parameters(initial: Preset, live: LiveEngine, stream: Stream, events: list[EngineEvent]) -> Preset:
    """Every registry parameter equals the value of its last applied request (the initial one if none)."""
    expected = initial.model_copy(deep=True)
    for event in events:
        if event.kind == "applied" and event.path in registry():
            section, name = event.path.split(".")
            setattr(getattr(expected, section), name, event.value)
            sent = stream.sent[event.request_id]
            assert sent.args["value"] == event.value or _same_number(sent.args["value"], event.value), event
    assert live.preset == expected
    pauses = [stream.sent[e.request_id].args["paused"] for e in events if e.path == "pause" and e.kind == "applied"]
    assert live.paused == (pauses[-1] if pauses else False)
    return expected


def _same_number(a: Any, b: Any) -> bool:
    return isinstance(a, (int, float)) and isinstance(b, (int, float)) and float(a) == float(b)


def check_tensors(live: LiveEngine, stream: Stream, events: list[EngineEvent], expected: Preset) -> None:
    """The pipeline's embeddings and noise equal a fresh prepare with the state the events describe."""
    applied = [e for e in events if e.kind == "applied" and e.request_id is not None]
    cond = [stream.sent[e.request_id] for e in applied if e.path in ("prompt.text", "prompt.blend")]
    noise = [stream.sent[e.request_id] for e in applied if e.path in ("prompt.seed", "seed.blend")]
    models = live.models

    def fresh() -> StreamPipeline:
        pipeline = StreamPipeline.prepared(models, expected.stream, expected.prompt, expected.filter)
        if cond and cond[-1].kind == "blend_prompts":
            items, method = cond[-1].args["items"], cond[-1].args["method"]
            blend = blend_embeddings([models.encode_prompt(t) for t, _ in items], [w for _, w in items], method)
            pipeline.set_embeddings(blend, pipeline.uncond)
        if noise and noise[-1].kind == "blend_seeds":
            items = noise[-1].args["items"]
            pipeline.set_noise(blend_noise([pipeline.noise_for_seed(s) for s, _ in items], [w for _, w in items]))
        return pipeline

    reference = in_one_thread(fresh)
    pipeline = live.pipeline
    assert torch.equal(pipeline.cond, reference.cond)
    assert torch.equal(pipeline.uncond, reference.uncond)
    assert torch.equal(pipeline.embeddings, reference.embeddings)
    assert torch.equal(pipeline.noise, reference.noise)
    assert (pipeline.guidance, pipeline.delta) == (reference.guidance, reference.delta)
    assert type(pipeline.cfg) is type(reference.cfg)
    assert torch.equal(pipeline.tables.timesteps, reference.tables.timesteps)
    assert pipeline.config == reference.config
    assert type(pipeline.filter) is type(reference.filter)
