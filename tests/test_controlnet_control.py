"""ControlNet through the one registry: presets and --set, the live engine (live fields in place at a frame boundary,
the list itself a rebuild), and the OSC surface over a real UDP socket (engine/control/)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import preset, settle
from test_osc import NS, _http, rig  # noqa: F401  (rig: the fixture, a real UDP socket on loopback)

from engine.config.presets import load_preset
from engine.config.registry import registry
from engine.config.schema import ControlNetConfig, Preset
from engine.control.routes import routes
from engine.core.errors import DreamwireError
from engine.live.loop import LiveEngine
from engine.pipeline.models import Models

TINY_NET = {"model": "random", "preprocessor": "canny", "scale": 0.8}


def with_controlnets(*nets: dict[str, Any]) -> Preset:
    config = preset()
    config.controlnets = [ControlNetConfig(**net) for net in nets]
    return config


def test_set_gives_a_whole_list_or_one_field_of_an_entry():
    config = load_preset(
        "offline-demo",
        ["controlnets=[{model: /models/cn-canny, preprocessor: canny, scale: 0.8}]", "controlnets.0.end=0.5"],
    )
    (net,) = config.controlnets
    assert (net.model, net.preprocessor, net.scale, net.end, net.enabled) == (
        "/models/cn-canny",
        "canny",
        0.8,
        0.5,
        True,
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("controlnets=[{model: x, scale: 2.5}]", "controlnets.0.scale: 2.5 is not accepted"),
        (
            "controlnets=[{model: x, preprocessor: external}]",
            "give an input URI exactly when the preprocessor is external",
        ),
        ("controlnets=[{model: x, preprocessor: sobel}]", "controlnets.0.preprocessor: 'sobel' is not accepted"),
        ("controlnets=[{model: x}, {model: x}, {model: x}, {model: x}, {model: x}]", "at most 4 items"),
        ("controlnets.1.scale=1", "no entry '1' in a list of 0"),
        ("controlnets=[{model: x, colour: red}]", "unknown key 'controlnets.0.colour' (allowed: canny_high,"),
    ],
)
def test_bad_controlnet_values_are_one_line_naming_key_and_value(override, message):
    with pytest.raises(DreamwireError) as caught:
        load_preset("offline-demo", [override])
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_every_entry_field_is_a_registry_path_with_its_osc_address():
    specs = registry()
    assert not specs["controlnets"].live and specs["controlnets"].apply == "rebuild"
    for index in range(4):
        for name in ("scale", "enabled", "start", "end", "canny_low", "canny_high"):
            spec = specs[f"controlnets.{index}.{name}"]
            assert spec.live and spec.apply == "controlnet" and spec.item == f"controlnets.<i>.{name}"
            assert routes()[f"/controlnets/{index}/{name}"].target == spec.path
        for name in ("model", "preprocessor", "input", "depth_model"):
            assert not specs[f"controlnets.{index}.{name}"].live
    assert "controlnets.4.scale" not in specs and "/controlnets/4/scale" not in routes()


def test_a_live_field_applies_between_frames_in_place_and_never_rebuilds(tiny_taesd_models: Models):
    engine = LiveEngine(with_controlnets(TINY_NET), models=Models(**{**tiny_taesd_models.__dict__, "loaded": {}}))
    try:
        pipeline = engine.pipeline
        unit = pipeline.controlnets.units[0]
        address = unit.row_scale.data_ptr()
        events = []
        engine.add_listener(events.append)
        engine.set("controlnets.0.scale", 1.5)
        engine.set("controlnets.0.canny_high", 150.0)
        assert engine.preset.controlnets[0].scale == 0.8  # sent, not applied: the frame in flight keeps 0.8
        assert float(unit.row_scale[0, 0]) == pytest.approx(0.8)
        settle(engine)  # the frame boundary (a loaded machine may spread the two over two boundaries)
        assert engine.preset.controlnets[0].scale == 1.5 and not engine.rebuilding
        assert engine.pipeline is pipeline and unit.row_scale.data_ptr() == address
        assert unit.row_scale[0, :2].flatten().tolist() == pytest.approx([1.5, 1.5])
        assert float(unit.preprocess.high) == 150.0
        assert [(e.kind, e.path) for e in events] == [
            ("applied", "controlnets.0.scale"),
            ("applied", "controlnets.0.canny_high"),
        ]
        with pytest.raises(DreamwireError, match="there is no such entry"):
            engine.set("controlnets.1.scale", 1.0)
        engine.set("controlnets.0.end", 0.5)
        with pytest.raises(DreamwireError, match=r"start 0\.9 is after end 0\.5"):
            engine.set("controlnets.0.start", 0.9)  # checked against the requested end, before it applies
    finally:
        engine.close()


def test_adding_and_removing_a_controlnet_is_a_rebuild(tiny_taesd_models: Models):
    engine = LiveEngine(preset(), models=Models(**{**tiny_taesd_models.__dict__, "loaded": {}}))
    try:
        assert engine.pipeline.controlnets is None
        engine.set("controlnets", [TINY_NET])
        settle(engine)
        assert engine.pipeline.controlnets is not None and engine.preset.controlnets[0].scale == 0.8
        engine.set("controlnets.0.scale", 0.3)  # live on the rebuilt pipeline
        settle(engine)
        assert engine.pipeline.controlnets.units[0].config.scale == 0.3
        engine.set("controlnets", [])
        settle(engine)
        assert engine.pipeline.controlnets is None and engine.preset.controlnets == []
    finally:
        engine.close()


def test_controlnet_addresses_over_a_real_udp_socket(rig):  # noqa: F811
    r = rig(with_controlnets(TINY_NET))
    pipeline = r.engine.pipeline
    r.controller.send(f"{NS}/controlnets/0/scale", 1.25)
    r.controller.send(f"{NS}/controlnets/0/enabled", 0)
    r.controller.send(f"{NS}/controlnets/0/start", "0.5")  # TouchDesigner's OSC Out DAT sends text
    r.controller.send(f"{NS}/controlnets/0/model", "/models/other")  # a rebuild key: refused by default
    r.controller.send(f"{NS}/controlnets", json.dumps([]))  # removing one: a rebuild key too
    r.controller.send(f"{NS}/controlnets/3/scale", 1.0)  # no such entry
    errors = r.controller.sync(r.feedback)
    assert len(errors) == 3
    assert errors[0].startswith(f"{NS}/controlnets/0/model: controlnets.0.model is a rebuild key")
    assert errors[1].startswith(f"{NS}/controlnets: controlnets is a rebuild key")
    assert errors[2].startswith(f"{NS}/controlnets/3/scale: controlnets.3: there is no such entry")
    r.apply()
    net = r.engine.preset.controlnets[0]
    assert (net.scale, net.enabled, net.start) == (1.25, False, 0.5)
    assert r.engine.pipeline is pipeline and pipeline.controlnets.active == []  # disabled: skipped
    assert r.feedback.wait(f"{NS}/controlnets/0/scale") == [1.25]  # the echo once applied
    assert r.get(f"{NS}/controlnets/0/enabled") == [0]
    status, tree = _http(r.http + "/dreamwire/controlnets")
    assert status == 200
    entry = tree["CONTENTS"]["0"]["CONTENTS"]
    assert entry["scale"]["VALUE"] == [1.25] and entry["scale"]["RANGE"] == [{"MIN": 0, "MAX": 2}]
    assert entry["scale"]["ACCESS"] == 3 and entry["model"]["ACCESS"] == 1
    assert "1" not in tree["CONTENTS"]  # only the entries the preset has


def test_the_list_over_osc_when_rebuild_keys_are_allowed(rig):  # noqa: F811
    r = rig(with_controlnets(TINY_NET), allow_rebuild_keys=True)
    r.controller.send(f"{NS}/controlnets", json.dumps([{"model": "random", "preprocessor": "soft_edge", "scale": 0.4}]))
    r.controller.send(f"{NS}/controlnets", "not json")
    errors = r.controller.sync(r.feedback)
    assert len(errors) == 1 and "expects a JSON list, got 'not json'" in errors[0]
    settle(r.engine)
    (net,) = r.engine.preset.controlnets
    assert (net.preprocessor, net.scale) == ("soft_edge", 0.4)
    assert r.engine.pipeline.controlnets.units[0].config.preprocessor == "soft_edge"


def sdtd(**entry: Any) -> str:
    """One StreamDiffusionTD /controlnets message: its JSON list (the StreamDiffusion fork's controlnet_config)."""
    return json.dumps([{"model_id": "random", "preprocessor": "canny", "conditioning_scale": 0.8, **entry}])


def test_streamdiffusiontd_controlnets_moves_the_live_fields_without_a_rebuild(rig):  # noqa: F811
    r = rig(with_controlnets(TINY_NET))
    pipeline = r.engine.pipeline
    params = {"low_threshold": 40, "high_threshold": 90, "image_resolution": 512}  # the last: no counterpart
    r.controller.send("/controlnets", sdtd(conditioning_scale=1.4, enabled=True, preprocessor_params=params))
    r.controller.send("/controlnets/0/end", 0.5)  # ours without the namespace: still ours
    assert r.controller.sync(r.feedback) == []
    r.apply()
    net = r.engine.preset.controlnets[0]
    assert (net.scale, net.canny_low, net.canny_high, net.end) == (1.4, 40.0, 90.0, 0.5)
    assert r.engine.pipeline is pipeline and not r.engine.rebuilding  # live fields: in place
    assert r.feedback.wait(f"{NS}/controlnets/0/scale") == [pytest.approx(1.4)]  # echoed under our address
    r.controller.send("/use_controlnet", 0)
    assert r.controller.sync(r.feedback) == []
    r.apply()
    assert not r.engine.preset.controlnets[0].enabled and pipeline.controlnets.active == []


def test_streamdiffusiontd_controlnets_bad_lists_and_rebuilds(rig):  # noqa: F811
    r = rig(with_controlnets(TINY_NET))
    r.controller.send("/controlnets", sdtd(model_id="thibaud/controlnet-sd21-depth-diffusers"))  # another net
    r.controller.send("/controlnets", sdtd(preprocessor="openpose"))
    r.controller.send("/controlnets", sdtd(conditioning_scale=3.0))
    r.controller.send("/controlnets", "{not json")
    r.controller.send("/controlnets", json.dumps({"model_id": "random"}))  # an object, not a list
    errors = r.controller.sync(r.feedback)
    assert len(errors) == 5
    assert errors[0].startswith("/controlnets: adds, removes or swaps a ControlNet (1 running, 1 sent): a rebuild")
    assert "/dreamwire/controlnets/<i>/scale" in errors[0]
    assert errors[1].startswith("/controlnets: entry 0: preprocessor 'openpose' has no counterpart here (mapped: canny")
    assert errors[2].startswith("/controlnets: entry 0: scale 3.0: Input should be less than or equal to 2")
    assert errors[3].startswith("/controlnets: expects a JSON list, got '{not json'")
    assert errors[4].startswith("/controlnets: expects a JSON list of objects")
    assert r.engine.requested.snapshot().controlnets[0].scale == 0.8  # nothing sent

    allowed = rig(with_controlnets(TINY_NET), allow_rebuild_keys=True)
    allowed.controller.send("/controlnets", sdtd(preprocessor="hed", conditioning_scale=0.3))
    assert allowed.controller.sync(allowed.feedback) == []
    (net,) = allowed.engine.requested.snapshot().controlnets  # the whole list, a rebuild
    assert (net.model, net.preprocessor, net.scale) == ("random", "soft_edge", 0.3)


def test_a_scale_moves_over_frames_like_any_other_number(tiny_taesd_models: Models):
    engine = LiveEngine(with_controlnets(TINY_NET), models=Models(**{**tiny_taesd_models.__dict__, "loaded": {}}))
    try:
        unit = engine.pipeline.controlnets.units[0]
        engine.set("controlnets.0.scale", 1.6, frames=4)
        engine.apply_pending_controls()
        scales = [unit.config.scale]
        for _ in range(5):
            engine.now.frame_number += 1  # an output frame went out
            engine.apply_pending_controls()
            scales.append(unit.config.scale)
        assert scales[0] < 1.6 and scales == sorted(scales) and len(set(scales)) >= 4 and scales[-1] == 1.6
        assert float(unit.row_scale[0, 0]) == pytest.approx(1.6)
        engine.set("controlnets.0.enabled", False)  # another field: the scale stays where it is
        engine.apply_pending_controls()
        assert unit.config.scale == 1.6 and not unit.config.enabled and engine.pipeline.controlnets.active == []
        with pytest.raises(DreamwireError, match="cannot change over a duration"):
            engine.set("controlnets.0.start", 0.5, seconds=1.0)
    finally:
        engine.close()


def test_an_external_input_is_checked_when_sent_and_file_uris_never_come_over_the_network(rig):  # noqa: F811
    r = rig(with_controlnets(TINY_NET), allow_rebuild_keys=True)
    with pytest.raises(DreamwireError, match="unknown source scheme 'bogus'"):  # refused to the sender, nothing queued
        r.engine.set("controlnets", [{"model": "random", "preprocessor": "external", "input": "bogus:x"}])
    external = {"model": "random", "preprocessor": "external", "input": "file:/etc/passwd"}
    r.controller.send(f"{NS}/controlnets", json.dumps([external]))
    errors = r.controller.sync(r.feedback)
    assert errors == [f"{NS}/controlnets: controlnets: file: URIs are refused over the network ('file:/etc/passwd')"]
    assert r.engine.requested.snapshot().controlnets[0].preprocessor == "canny"  # unchanged
