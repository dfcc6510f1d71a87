"""What lies between a step's time and the bare model time, read off a torch.profiler trace (GPU bench).

From the Chrome trace: the GPU's busy time and idle gaps between kernels (launch gaps), the host syncs
(cuda*Synchronize, blocking copies), the copies and dtype casts, and, where the bench annotated the frame
with record_function ranges (load, step, encode, unet, decode, to_host), the kernel time per stage.
Kernels are tied to their stage through the launch call's correlation id.
"""

from __future__ import annotations

import bisect
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
SYNC_CALLS = re.compile(r"cuda(Stream|Device|Event)Synchronize|cudaMemcpy(?!Async)|cuStreamSynchronize")
KINDS = [  # (kind, pattern on the kernel name), first match wins
    ("memcpy/memset", re.compile(r"^Memcpy|^Memset|memcpy|memset", re.I)),
    ("attention", re.compile(r"flash|fmha|attention|sdpa|softmax", re.I)),
    ("convolution", re.compile(r"conv|cudnn|implicit_gemm|fprop|dgrad|xmma_.*nhwc|nchwToNhwc|nhwcToNchw", re.I)),
    ("matmul", re.compile(r"gemm|cutlass|sm90_xmma|cublas|wgmma|matmul", re.I)),
    ("norm", re.compile(r"norm", re.I)),
    ("triton (fused)", re.compile(r"^triton", re.I)),
    ("copy/cast", re.compile(r"copy|cast|_to_copy|convert", re.I)),
    ("elementwise", re.compile(r"elementwise|vectorized|unrolled|reduce", re.I)),
]


def kernel_kind(name: str) -> str:
    for kind, pattern in KINDS:
        if pattern.search(name):
            return kind
    return "other"


def analyse_trace(path: Path, frames: int, top: int = 15) -> dict[str, Any]:
    """frames: how many frames the trace covers (for per-frame figures)."""
    events = [e for e in json.loads(Path(path).read_text()).get("traceEvents", []) if e.get("ph") == "X"]
    gpu = sorted((e for e in events if e.get("cat") in GPU_CATEGORIES), key=lambda e: e["ts"])
    launches = {e["args"]["correlation"]: e for e in events if _is_runtime(e) and "correlation" in e.get("args", {})}
    stage_of = _stages(events, launches)
    result: dict[str, Any] = {"frames": frames, "gpu_events": len(gpu)}
    if not gpu:
        result["note"] = "no GPU events in the trace (CPU run or CUPTI unavailable)"
    busy = gaps_total = 0.0
    gaps: list[tuple[float, str, str, str]] = []
    by_kind: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    by_stage: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    end, previous_name = None, ""
    for event in gpu:
        duration = float(event.get("dur", 0.0))
        kind = kernel_kind(event.get("name", ""))
        by_kind[kind][0] += duration
        by_kind[kind][1] += 1
        stage = stage_of.get(event.get("args", {}).get("correlation"), "unannotated")
        by_stage[stage][0] += duration
        by_stage[stage][1] += 1
        start = float(event["ts"])
        if end is not None and start > end:
            gap = start - end
            gaps_total += gap
            launch = launches.get(event.get("args", {}).get("correlation"), {})
            gaps.append((gap, previous_name, event.get("name", ""), launch.get("name", "?")))
        busy += duration if end is None or start >= end else max(0.0, start + duration - end)
        end = max(end or 0.0, start + duration)
        previous_name = event.get("name", "")
    span = (end - float(gpu[0]["ts"])) if gpu else 0.0
    syncs = [e for e in events if _is_runtime(e) and SYNC_CALLS.search(e.get("name", ""))]
    per_frame = max(frames, 1)
    result.update(
        {
            "gpu_span_us_per_frame": span / per_frame,
            "gpu_busy_us_per_frame": busy / per_frame,
            "gpu_idle_us_per_frame": gaps_total / per_frame,
            "gpu_busy_share": busy / span if span else None,
            "idle_gaps": _gap_histogram([g[0] for g in gaps]),
            "largest_gaps": [
                {"us": round(g, 1), "after": _short(a), "before": _short(b), "launched_by": c}
                for g, a, b, c in sorted(gaps, reverse=True)[:top]
            ],
            "host_syncs_per_frame": len(syncs) / per_frame,
            "host_sync_us_per_frame": sum(float(e.get("dur", 0)) for e in syncs) / per_frame,
            "host_sync_calls": sorted({e["name"] for e in syncs}),
            "kernel_us_per_frame_by_kind": {k: round(v[0] / per_frame, 1) for k, v in _sorted(by_kind)},
            "kernels_per_frame_by_kind": {k: round(v[1] / per_frame, 1) for k, v in _sorted(by_kind)},
            "kernel_us_per_frame_by_stage": {k: round(v[0] / per_frame, 1) for k, v in _sorted(by_stage)},
            "kernels_per_frame_by_stage": {k: round(v[1] / per_frame, 1) for k, v in _sorted(by_stage)},
            "top_kernels": _top_kernels(gpu, per_frame, top),
        }
    )
    return result


def _is_runtime(event: dict[str, Any]) -> bool:
    return event.get("cat") in ("cuda_runtime", "cuda_driver")


def _stages(events: list[dict[str, Any]], launches: dict[int, dict[str, Any]]) -> dict[int, str]:
    """correlation id → the innermost record_function range (on the launching thread) holding its launch."""
    ranges = sorted(
        (float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0)), e["name"], e.get("tid"))
        for e in events
        if e.get("cat") == "user_annotation" and not e["name"].startswith("ProfilerStep")
    )
    starts = [r[0] for r in ranges]
    stage_of: dict[int, str] = {}
    for correlation, launch in launches.items():
        ts = float(launch["ts"])
        for index in range(bisect.bisect_right(starts, ts) - 1, -1, -1):  # latest start first: the innermost
            _, finish, name, tid = ranges[index]
            if ts <= finish and tid == launch.get("tid"):
                stage_of[correlation] = name
                break
    return stage_of


def _gap_histogram(gaps: list[float]) -> dict[str, Any]:
    bins = {"<2us": 0, "2-10us": 0, "10-50us": 0, "50-500us": 0, ">=500us": 0}
    totals = dict.fromkeys(bins, 0.0)
    for gap in gaps:
        key = "<2us" if gap < 2 else "2-10us" if gap < 10 else "10-50us" if gap < 50 else "50-500us"
        key = ">=500us" if gap >= 500 else key
        bins[key] += 1
        totals[key] += gap
    return {"count": bins, "total_us": {k: round(v, 1) for k, v in totals.items()}}


def _top_kernels(gpu: list[dict[str, Any]], per_frame: int, top: int) -> list[dict[str, Any]]:
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for event in gpu:
        totals[event.get("name", "")][0] += float(event.get("dur", 0))
        totals[event.get("name", "")][1] += 1
    return [
        {"kernel": _short(name), "kind": kernel_kind(name), "us_per_frame": round(t / per_frame, 1), "calls": int(n)}
        for name, (t, n) in sorted(totals.items(), key=lambda kv: -kv[1][0])[:top]
    ]


def _sorted(table: dict[str, list[float]]) -> list[tuple[str, list[float]]]:
    return sorted(table.items(), key=lambda kv: -kv[1][0])


def _short(name: str, width: int = 110) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def format_analysis(analysis: dict[str, Any]) -> str:
    """The analysis as markdown."""
    lines = [f"frames profiled: {analysis['frames']}, GPU events: {analysis['gpu_events']}"]
    if "note" in analysis:
        lines.append(f"note: {analysis['note']}")
    for key in ("gpu_span_us_per_frame", "gpu_busy_us_per_frame", "gpu_idle_us_per_frame", "gpu_busy_share"):
        value = analysis.get(key)
        lines.append(f"- {key}: {value:.3f}" if isinstance(value, float) else f"- {key}: {value}")
    lines.append(
        f"- host syncs per frame: {analysis.get('host_syncs_per_frame', 0):.1f} "
        f"({analysis.get('host_sync_us_per_frame', 0):.0f} us; {', '.join(analysis.get('host_sync_calls', []))})"
    )
    lines.append(f"- idle gaps: {json.dumps(analysis.get('idle_gaps', {}))}")
    for title, key in (
        ("kernel time per frame by stage (us)", "kernel_us_per_frame_by_stage"),
        ("kernel time per frame by kind (us)", "kernel_us_per_frame_by_kind"),
        ("kernels per frame by kind", "kernels_per_frame_by_kind"),
    ):
        lines += ["", f"### {title}", "", "| | |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in analysis.get(key, {}).items()]
    lines += ["", "### top kernels", "", "| kernel | kind | us/frame | calls |", "|---|---|---:|---:|"]
    for k in analysis.get("top_kernels", []):
        lines.append(f"| `{k['kernel']}` | {k['kind']} | {k['us_per_frame']} | {k['calls']} |")
    lines += ["", "### largest idle gaps", "", "| us | after | before | launched by |", "|---:|---|---|---|"]
    for g in analysis.get("largest_gaps", []):
        lines.append(f"| {g['us']} | `{g['after']}` | `{g['before']}` | {g['launched_by']} |")
    return "\n".join(lines) + "\n"
