"""The GPU bench script (engine/bench/gpu.py): its CPU dry run end to end, and the parts that only
see real data on a GPU (the profile's trace analysis, the summary) on made-up inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.bench.gpu import BACKENDS, format_markdown, summary_rows
from engine.bench.gpu_profile import analyse_trace, kernel_kind

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_PYTHON = Path(os.environ.get("DREAMWIRE_REFERENCE_VENV", "/tmp/streamdiffusion-reference")) / "bin/python"


def test_dry_run_on_cpu_writes_every_part(tmp_path):
    """The tiny model through the same code as on the GPU: eager measured, cuda_graph skipped with its reason,
    the floor, the profile, the reference (where its venv exists), results.json and results.md written."""
    out = tmp_path / "bench"
    command = [sys.executable, "-m", "engine.bench.gpu", "--tiny", "--out", str(out), "--budget-s", "200"]
    command += ["--settings", "img2img-1step-512,txt2img-turbo-1step-512", "--backends", "eager,cuda_graph"]
    command += ["--warmup-s", "0.1", "--timed-s", "0.3", "--profile-frames", "3"]
    with_reference = REFERENCE_PYTHON.exists()
    if with_reference:
        command += ["--reference-python", str(REFERENCE_PYTHON)]
    else:
        print(f"no reference venv at {REFERENCE_PYTHON}: the reference part is not exercised")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    assert data["errors"] == [], data["errors"]
    for name in ("img2img-1step-512", "txt2img-turbo-1step-512"):
        eager = data["measurements"][name]["eager"]
        assert eager["fps"] > 0 and eager["frames"] >= 1 and eager["acceleration_run"] == "none"
        assert "CUDA" in data["measurements"][name]["cuda_graph"]["skipped"]
        assert data["floor"][name]["eager modules"]["best_ms"] > 0
        if with_reference:
            assert data["reference"][name]["reference"]["fps"] > 0
    assert data["profile"]["img2img-1step-512"]["eager"]["frames"] == 3
    assert (out / "profile_kernels.txt").read_text().strip()
    assert "| img2img-1step-512 |" in (out / "results.md").read_text()
    assert "| img2img-1step-512 |" in done.stdout  # the summary is printed last


def _event(cat, name, ts, dur, tid=1, correlation=None):
    event = {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "tid": tid, "args": {}}
    if correlation is not None:
        event["args"]["correlation"] = correlation
    return event


def test_trace_analysis_finds_gaps_syncs_and_stages(tmp_path):
    events = [
        _event("user_annotation", "frame", 0, 1000),
        _event("user_annotation", "unet", 100, 200),
        _event("cuda_runtime", "cudaLaunchKernel", 150, 5, correlation=1),
        _event("cuda_runtime", "cudaLaunchKernel", 400, 5, correlation=2),
        _event("cuda_runtime", "cudaStreamSynchronize", 600, 50),
        _event("kernel", "sm90_xmma_gemm_f16f16_f16f32", 200, 100, tid=7, correlation=1),
        _event("kernel", "void at::native::vectorized_elementwise_kernel<4>", 350, 20, tid=7, correlation=2),
        _event("gpu_memcpy", "Memcpy DtoH (Device -> Pageable)", 380, 10, tid=7, correlation=3),
    ]
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps({"traceEvents": events}))
    analysis = analyse_trace(trace, frames=2)
    assert analysis["gpu_events"] == 3
    assert analysis["gpu_busy_us_per_frame"] == pytest.approx(130 / 2)
    assert analysis["gpu_idle_us_per_frame"] == pytest.approx(60 / 2)  # 300 → 350 and 370 → 380
    assert analysis["largest_gaps"][0]["us"] == 50.0
    assert analysis["largest_gaps"][0]["launched_by"] == "cudaLaunchKernel"
    assert analysis["kernel_us_per_frame_by_stage"] == {"unet": 50.0, "frame": 10.0, "unannotated": 5.0}
    assert analysis["host_syncs_per_frame"] == 0.5 and analysis["host_sync_calls"] == ["cudaStreamSynchronize"]
    assert analysis["kernel_us_per_frame_by_kind"]["matmul"] == 50.0


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("Memcpy HtoD (Pageable -> Device)", "memcpy/memset"),
        ("pytorch_flash::flash_fwd_kernel<...>", "attention"),
        ("sm90_xmma_fprop_implicit_gemm_f16f16_nhwc", "convolution"),
        ("triton_poi_fused_add_mul_0", "triton (fused)"),
        ("void at::native::(anonymous namespace)::RowwiseMomentsCUDAKernel", "other"),
        ("void at::native::unrolled_elementwise_kernel<direct_copy_kernel_cuda>", "copy/cast"),
    ],
)
def test_kernel_kinds(name, kind):
    assert kernel_kind(name) == kind


def test_summary_names_the_best_backend_and_the_ratios():
    data = {
        "measurements": {
            "s": {"eager": {"fps": 100.0, "j_per_frame": 2.0}, "cuda_graph": {"fps": 180.0, "j_per_frame": 1.5}}
        },
        "floor": {"s": {"eager modules": {"best_ms": 5.0}}},
        "reference": {"s": {"reference": {"fps": 60.0, "j_per_frame": 4.0}}},
    }
    (row,) = summary_rows(data)
    assert row["best"] == "cuda_graph" and row["best_fps"] == 180.0
    assert row["best_over_floor"] == pytest.approx(0.9) and row["best_over_reference"] == pytest.approx(3.0)
    assert row["j_per_frame"] == 1.5 and row["reference_j_per_frame"] == 4.0
    table = format_markdown(data)
    assert "| s | 100.0 | 180.0 | – | – | 200.0 | 0.90 | 60.0 | 3.00 | 1.500 | 4.000 |" in table
    assert list(BACKENDS) == ["eager", "cuda_graph", "compile", "compile+cuda_graph"]
