"""Presets and --set overrides: typed, unknown keys rejected, one-line errors naming the key and value."""

from __future__ import annotations

import pytest

from engine.config.presets import available_presets, load_preset
from engine.config.registry import markdown_table, registry
from engine.core.errors import DreamwireError


def test_required_presets_load():
    assert {"default", "lcm-4step", "txt2img-turbo", "offline-demo"} <= set(available_presets())
    for name in available_presets():
        load_preset(name)
    assert load_preset("offline-demo").model.id == "tiny"
    assert load_preset("default").model.id == "stabilityai/sd-turbo"
    assert load_preset("default").model.vae == "madebyollin/taesd"


def test_overrides_by_dotted_path():
    preset = load_preset(
        "offline-demo",
        [
            "stream.t_index_list=[10,25,40]",
            "model.vae=null",
            "prompt.seed=7",
            "model.id=/some/folder",
            "prompt.text=a b",
        ],
    )
    assert preset.stream.t_index_list == [10, 25, 40]
    assert preset.model.vae is None
    assert preset.prompt.seed == 7
    assert preset.model.id == "/some/folder"
    assert preset.prompt.text == "a b"


def test_onetime_is_an_alias_of_initialize():
    assert load_preset("offline-demo", ["stream.cfg_type=onetime"]).stream.cfg_type == "initialize"


@pytest.mark.parametrize(
    ("assignment", "pattern"),
    [
        ("stream.t_index_list=[30,10]", r"t_index_list \[30, 10\] must be strictly ascending"),
        ("stream.t_index_list=[10,50]", r"t_index_list \[10, 50\] is out of range.*0\.\.49"),
        ("stream.t_index_list=[-1,10]", r"t_index_list \[-1, 10\] is out of range"),
        ("stream.cfg_type=bogus", r"stream.cfg_type: 'bogus'.*allowed: none, full, self, initialize"),
        ("stream.width=20", r"stream.width: 20 .*int in \[64, 2048\]"),
        ("stream.colour=red", r"unknown key 'stream.colour' \(allowed: acceleration, acceleration_fallback, cfg_type"),
        (
            "sound.volume=3",
            r"unknown key 'sound' \(allowed: controlnets, feature_bank, filter, io, ip_adapter, loras, midi, "
            r"model, osc, processors, prompt, stream, tempo\)",
        ),
        ("prompt.guidance=-1", r"prompt.guidance: -1 .*float in \[0, 20\]"),
        ("model.device=gpu", r"model.device: 'gpu'"),
        ("novalue", r"expected key=value"),
    ],
)
def test_bad_values_name_the_key_and_value(assignment, pattern):
    with pytest.raises(DreamwireError, match=pattern) as caught:
        load_preset("offline-demo", [assignment])
    assert "\n" not in str(caught.value)


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(DreamwireError, match=r"unknown preset 'nope' \(available: .*offline-demo"):
        load_preset("nope")


def test_preset_file_with_unknown_key(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model:\n  id: tiny\n  colour: red\n")
    with pytest.raises(DreamwireError, match=r"unknown key 'model.colour'"):
        load_preset(str(path))


def test_registry_is_the_single_table():
    specs = registry()
    assert specs["prompt.guidance"].live and not specs["stream.width"].live
    assert specs["stream.cfg_type"].choices == ("none", "full", "self", "initialize")
    assert specs["filter.threshold"].minimum == 0.0 and specs["filter.threshold"].maximum == 1.0
    table = markdown_table()
    assert all(f"`{spec.item or path}`" in table for path, spec in specs.items())
