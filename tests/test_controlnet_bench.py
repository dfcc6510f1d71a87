"""`dreamwire bench`'s controlnet part (engine/bench/controlnet.py) on the tiny model: fps with 0, 1 and 2
ControlNets (and one with its residuals reused for 2 and 4 frames) as ratios to none from one run, and each
preprocessor's cost (depth: why not, when its model cannot be loaded here)."""

from __future__ import annotations

from conftest import preset

from engine.bench.controlnet import controlnet_costs, format_controlnet
from engine.config.schema import ControlNetConfig
from engine.pipeline.models import Models


def test_controlnet_bench_reports_fps_ratios_and_preprocessor_costs(tiny_taesd_models: Models, tmp_path):
    config = preset()
    missing = str(tmp_path / "no-depth-model")  # no download here: the depth cost says why it is missing
    config.controlnets = [ControlNetConfig(model="random", preprocessor="depth", depth_model=missing)]
    models = Models(**{**tiny_taesd_models.__dict__, "loaded": {}})
    result = controlnet_costs(models, config, frames=3, rounds=1)
    assert set(result["fps"]) == {0, 1, 2, "1 reuse 2", "1 reuse 4"} and all(fps > 0 for fps in result["fps"].values())
    assert set(result["reuse_difference"]) == {2, 4} and result["reuse_difference"][4] > 0  # reuse moves the picture
    assert result["fps_ratio_to_none"][0] == 1.0 and result["controlnet_model"] == "random"
    costs = result["preprocessor_ms"]
    assert costs["canny"] > 0 and costs["soft_edge"] > 0
    assert costs["depth"].startswith("not measured: depth model folder not found")
    lines = format_controlnet(result)
    assert lines[0].startswith("controlnets (random, ratio to none): 0: ") and "1 reuse 4: " in lines[0]
    assert lines[1].startswith("controlnet residual reuse (1 net)") and "canny" in lines[2]
