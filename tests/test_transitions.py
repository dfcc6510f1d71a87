from __future__ import annotations

import functools

import pytest
import torch

from engine.core.errors import DreamwireError
from engine.live.blending import slerp
from engine.live.transitions import Transition, TransitionSet, ease


def test_easing_endpoints_and_shape():
    for kind in ("linear", "smoothstep"):
        assert ease(kind, 0.0) == 0.0
        assert ease(kind, 1.0) == 1.0
        assert ease(kind, 0.5) == 0.5
    assert ease("smoothstep", 0.25) == pytest.approx(0.15625)  # slow start
    assert ease("smoothstep", 0.75) == pytest.approx(0.84375)  # slow end


def test_frames_transition_standalone_anchors_at_first_call():
    tr = Transition(0.0, 10.0, frames=4)
    assert [tr.value_at(0.0, f) for f in range(100, 105)] == [0.0, 2.5, 5.0, 7.5, 10.0]
    assert tr.done
    assert tr.value_at(0.0, 200) == 10.0


def test_seconds_transition_ignores_frame_numbers():
    tr = Transition(1.0, 3.0, seconds=2.0, ease="smoothstep", start_s=10.0)
    assert tr.value_at(10.0, 0) == 1.0
    assert tr.value_at(11.0, 0) == pytest.approx(2.0)
    assert tr.value_at(10.5, 7) == pytest.approx(1.0 + 2.0 * 0.15625)
    assert not tr.done
    assert tr.value_at(12.5, 0) == 3.0
    assert tr.done


def test_set_frames_ends_exactly_at_tensor_target_and_drops():
    ts = TransitionSet()
    ts.advance(0.0, 0)
    a = torch.randn(1, 77, 8)
    b = torch.randn(1, 77, 8) * 1e3  # a + (b - a) * 1.0 would not round-trip bit for bit
    ts.start("prompt", a, b, frames=3)
    got = [ts.advance(0.0, f) for f in (1, 2, 3)]
    torch.testing.assert_close(got[0]["prompt"], torch.lerp(a, b, 1 / 3))
    torch.testing.assert_close(got[1]["prompt"], torch.lerp(a, b, 2 / 3))
    assert got[2]["prompt"] is b
    assert "prompt" not in ts
    assert len(ts) == 0
    assert dict(ts.advance(0.0, 4)) == {}


def test_set_seconds_moves_on_the_next_frame_after_start():
    ts = TransitionSet()
    ts.advance(100.0, 0)
    ts.start("guidance", 1.0, 2.0, seconds=1.0)
    assert ts.advance(100.25, 1)["guidance"] == pytest.approx(1.25)
    assert ts.advance(100.75, 2)["guidance"] == pytest.approx(1.75)
    last = ts.advance(101.1, 3)
    assert last["guidance"] == 2.0
    assert ts.advance(101.2, 4) == {}


def test_zero_duration_is_a_cut():
    ts = TransitionSet()
    ts.start("delta", 0.2, 0.9, frames=0)
    assert ts.advance(0.0, 0) == {"delta": 0.9}
    ts.start("delta", 0.9, 0.1, seconds=0)
    assert ts.advance(0.1, 1) == {"delta": 0.1}
    assert len(ts) == 0


def test_retarget_midway_starts_from_current_value():
    ts = TransitionSet()
    ts.advance(0.0, 0)
    ts.start("x", 0.0, 10.0, frames=10)
    for f in range(1, 5):
        cur = ts.advance(0.0, f)["x"]
    assert cur == pytest.approx(4.0)
    ts.start("x", 999.0, 0.0, frames=4)  # the 999 start is ignored: x is mid-transition
    values = [ts.advance(0.0, f)["x"] for f in range(5, 9)]
    assert values == pytest.approx([3.0, 2.0, 1.0, 0.0])
    assert values[-1] == 0.0


def test_retarget_before_any_frame_keeps_original_start():
    ts = TransitionSet()
    ts.start("x", 5.0, 10.0, frames=2)
    ts.start("x", -1.0, 0.0, frames=2)  # no frame applied yet: current is still 5.0
    assert [ts.advance(0.0, f)["x"] for f in range(3)] == pytest.approx([5.0, 2.5, 0.0])


def test_independent_names_and_slerp_interp():
    ts = TransitionSet()
    ts.advance(0.0, 0)
    a = torch.randn(2, 4, 8, 8)
    b = torch.randn(2, 4, 8, 8)
    ts.start("noise", a, b, frames=2, interp=functools.partial(slerp, dim=None, lerp_norm=False))
    ts.start("strength", 0.0, 1.0, frames=4)
    mid = ts.advance(0.0, 1)
    torch.testing.assert_close(mid["noise"], slerp(a, b, 0.5, dim=None, lerp_norm=False))
    assert mid["strength"] == pytest.approx(0.25)
    end = ts.advance(0.0, 2)
    assert end["noise"] is b
    assert list(ts.advance(0.0, 3)) == ["strength"]


def test_idle_advance_returns_shared_readonly_empty_mapping():
    ts = TransitionSet()
    first = ts.advance(0.0, 0)
    assert first is ts.advance(0.1, 1)
    assert len(first) == 0
    with pytest.raises(TypeError):
        first["x"] = 1.0  # type: ignore[index]


def test_cancel_and_clear():
    ts = TransitionSet()
    ts.start("a", 0.0, 1.0, frames=5)
    ts.start("b", 0.0, 1.0, frames=5)
    ts.cancel("a")
    assert "a" not in ts
    assert "b" in ts
    ts.clear()
    assert ts.advance(0.0, 0) == {}


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({}, "seconds=None, frames=None"),
        ({"seconds": 1.0, "frames": 3}, "seconds=1.0, frames=3"),
        ({"seconds": -0.5}, "-0.5"),
        ({"seconds": float("inf")}, "inf"),
        ({"frames": -2}, "-2"),
        ({"frames": 2.5}, "2.5"),
        ({"frames": 2, "ease": "bounce"}, "'bounce'"),
    ],
)
def test_bad_arguments_raise_naming_the_value(kwargs, shown):
    with pytest.raises(DreamwireError) as info:
        Transition(0.0, 1.0, **kwargs)
    assert shown in str(info.value)
