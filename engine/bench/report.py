"""`dreamwire bench`'s text report: the pipeline table, then one paragraph per measurement that ran."""

from __future__ import annotations

from typing import Any

from engine.bench.bridges import format_bridge_costs
from engine.bench.controlnet import format_controlnet
from engine.bench.flicker import format_flicker
from engine.bench.osc import format_osc
from engine.bench.pipeline import Measurement, format_table
from engine.bench.styles import format_styles
from engine.bench.tempo import format_tempo


def format_report(report: dict[str, Any]) -> str:
    lines = []
    if "measurements" in report:
        lines += [format_table([Measurement(**row) for row in report["measurements"]]), ""]
        lines += [f"{key}: {value:.2f}x" for key, value in report["ratios"].items()]
    if "prompt_changes" in report:
        pc = report["prompt_changes"]
        lines.append(
            f"prompt changes: {pc['prompt_changes']} in {pc['frames']} frames, frame time median "
            f"{pc['median_ms']:.1f} ms, p99 {pc['p99_ms']:.1f} ms, p99/median {pc['p99_over_median']:.2f}x (target "
            f"<= 1.5x); p99 of the frames a change touches {pc['changing_p99_ms']:.1f} ms, of the others "
            f"{pc['steady_p99_ms']:.1f} ms"
        )
    if "loop" in report:
        loop = report["loop"]
        lines.append(
            f"loop efficiency: engine {loop['engine_fps']:.1f} fps / bare pipeline {loop['bare_pipeline_fps']:.1f} "
            f"fps = {loop['efficiency']:.2f}"
        )
    if "osc" in report:
        lines.append(format_osc(report["osc"]))
    if "soak" in report:
        soak = report["soak"]
        lines.append(
            f"memory soak: {soak['frames']} frames, RSS {soak['rss_after_warmup_mb']:.0f} MB after warm-up, "
            f"{soak['rss_end_mb']:.0f} MB at the end (growth {soak['growth_mb']:+.1f} MB, "
            f"peak {soak['rss_peak_mb']:.0f} MB)"
        )
    if "reference" in report:
        ref = report["reference"]
        lines.append(
            f"reference side by side ({ref['frames']} frames, median of {len(ref['our_runs_fps'])} runs each): "
            f"ours {ref['ours_fps']:.1f} fps, reference {ref['reference_fps']:.1f} fps, ratio {ref['ratio']:.2f}x, "
            f"max |ours - reference| {ref['max_abs_diff']:.2e}"
        )
    if "bridges" in report:
        lines += format_bridge_costs(report["bridges"])
    if "tempo" in report:
        lines.append(format_tempo(report["tempo"]))
    if "controlnets" in report:
        lines += format_controlnet(report["controlnets"])
    if "flicker" in report:
        lines += format_flicker(report["flicker"])
    if "styles" in report:
        lines.append(format_styles(report["styles"]))
    lines.append(f"device: {report['device']}, torch threads: {report['threads']}")
    return "\n".join(lines)
