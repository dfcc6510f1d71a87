"""`dreamwire bench`: the CLI wiring. The measurements live in engine/bench/, one module each; they run one after
another, never two at once, so that none competes with another for the cores (`--only` runs a subset)."""

from __future__ import annotations

import argparse
import gc
import json
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch

from engine.config.schema import Preset
from engine.pipeline.models import Models

PARTS = (
    "pipeline",
    "prompt-changes",
    "loop",
    "bridges",
    "osc",
    "tempo",
)  # the default; `--only controlnets` adds ControlNets, `--only flicker` the flicker metric, `--only styles`
# LoRAs and the IP-Adapter


def run_bench(preset: Preset, args: argparse.Namespace) -> dict[str, Any]:
    from engine.bench.pipeline import load_device_name
    from engine.bench.reference import check_reference, reference_side_by_side
    from engine.bench.report import format_report
    from engine.pipeline.models import load_models

    # Before anything is measured: a wrong --reference-python or a missing run_reference.py is a one-line error now,
    # not after minutes of measuring.
    script = check_reference(args.reference_python, args.reference_script) if args.reference_python else None
    torch.set_grad_enabled(False)
    models = load_models(preset.model)
    report: dict[str, Any] = {"device": load_device_name(preset), "threads": torch.get_num_threads()}
    measure = _parts(models, preset, args.frames)
    for part in args.only or PARTS:
        gc.collect()  # the previous part's garbage is collected now, not during this part's frames
        report.update(measure[part]())
    if args.soak:
        from engine.bench.live import memory_soak

        report["soak"] = memory_soak(models, preset, args.soak)
    if script is not None:
        report["reference"] = reference_side_by_side(preset, args.reference_python, script, args.frames)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return report


def _parts(models: Models, preset: Preset, frames: int) -> dict[str, Callable[[], dict[str, Any]]]:
    """Each part of the bench: a function giving its entries of the report."""
    from engine.bench.bridges import bridge_costs
    from engine.bench.controlnet import controlnet_costs
    from engine.bench.flicker import flicker_benchmarks
    from engine.bench.live import loop_efficiency, prompt_change_frame_times
    from engine.bench.osc import osc_benchmarks
    from engine.bench.pipeline import ratios, run_measurements
    from engine.bench.styles import style_costs
    from engine.bench.tempo import tempo_benchmarks

    def pipeline() -> dict[str, Any]:
        results = run_measurements(models, preset, frames)
        return {"measurements": [asdict(r) for r in results], "ratios": ratios(results)}

    def prompt_changes() -> dict[str, Any]:
        changes = prompt_change_frame_times(models, preset, frames=max(50, 8 * frames))
        return {"prompt_changes": {**asdict(changes), "p99_over_median": changes.p99_over_median}}

    return {
        "pipeline": pipeline,
        "prompt-changes": prompt_changes,
        "loop": lambda: {"loop": loop_efficiency(models, preset, seconds=max(2.0, frames / 6))},
        "bridges": lambda: {"bridges": bridge_costs(frames=max(100, 8 * frames))},
        "osc": lambda: {"osc": osc_benchmarks(models, preset)},
        "tempo": lambda: {"tempo": tempo_benchmarks(models, preset, changes=max(4, frames), frames=max(8, 4 * frames))},
        "controlnets": lambda: {"controlnets": controlnet_costs(models, preset, frames)},
        "flicker": lambda: {"flicker": flicker_benchmarks(models, preset, frames=max(12, frames))},
        "styles": lambda: {"styles": style_costs(models, preset, frames)},
    }
