"""`dreamwire bench`: the CLI wiring. The measurements live in engine/bench/, one module each; they run one after
another, never two at once, so that none competes with another for the cores."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

import torch

from engine.config.schema import Preset


def run_bench(preset: Preset, args: argparse.Namespace) -> dict[str, Any]:
    from engine.bench.bridges import bridge_costs
    from engine.bench.live import loop_efficiency, memory_soak, prompt_change_frame_times
    from engine.bench.osc import osc_benchmarks
    from engine.bench.pipeline import load_device_name, ratios, run_measurements
    from engine.bench.reference import check_reference, reference_side_by_side
    from engine.bench.report import format_report
    from engine.pipeline.models import load_models

    # Before anything is measured: a wrong --reference-python or a missing run_reference.py is a one-line error now,
    # not after minutes of measuring.
    script = check_reference(args.reference_python, args.reference_script) if args.reference_python else None
    torch.set_grad_enabled(False)
    models = load_models(preset.model)
    results = run_measurements(models, preset, args.frames)
    changes = prompt_change_frame_times(models, preset, frames=max(50, 8 * args.frames))
    report: dict[str, Any] = {
        "device": load_device_name(preset),
        "threads": torch.get_num_threads(),
        "measurements": [asdict(r) for r in results],
        "ratios": ratios(results),
        "prompt_changes": {**asdict(changes), "p99_over_median": changes.p99_over_median},
        "loop": loop_efficiency(models, preset, seconds=max(2.0, args.frames / 6)),
        "bridges": bridge_costs(frames=max(100, 8 * args.frames)),
        "osc": osc_benchmarks(models, preset),
    }
    if args.soak:
        report["soak"] = memory_soak(models, preset, args.soak)
    if script is not None:
        report["reference"] = reference_side_by_side(preset, args.reference_python, script, args.frames)
    print(json.dumps(report, indent=2) if args.json else format_report(results, report))
    return report
