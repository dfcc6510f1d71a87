"""Bridge cost per frame for `dreamwire bench`: what one output frame costs the sink's thread at 512x512, from the
engine's (H, W, 3) uint8 RGB to handed over (conversion + send), for shm (target: at most 1 ms) and NDI.

NDI is measured as the sink runs it (write_video_async: NDI compresses on its own thread) and once more with the
synchronous write_video, which includes the compression, so the total CPU cost is visible too. NDI compresses only
for connected receivers, so a local receiver is connected first (it needs NDI discovery to find the sender: on a
machine without a network, NDI_CONFIG_DIR with a loopback ndi-config.v1.json, as the tests use); the report says
when none connected.
"""

from __future__ import annotations

import logging
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bridges.pattern import pattern_image
from engine.core.errors import DreamwireError
from engine.core.frames import Frame

log = logging.getLogger(__name__)

SIZE = 512
SHM_BUDGET_MS = 1.0
_IMAGES = 8  # distinct frames, cycled, so nothing is cached between writes


@dataclass
class BridgeCost:
    bridge: str
    median_ms: float
    p95_ms: float
    frames: int
    note: str = ""


def bridge_costs(frames: int = 200) -> dict[str, Any]:
    """{'size', 'costs': [BridgeCost...], 'unavailable': {bridge: why}, 'shm_within_budget': bool}."""
    images = [pattern_image(k * 7, SIZE, SIZE) for k in range(_IMAGES)]
    costs, unavailable = _shm_costs(images, frames), {}
    try:
        costs += _ndi_costs(images, max(20, frames // 2))
    except (ImportError, OSError, DreamwireError) as error:  # no cyndilib (the ndi extra) or no NDI runtime here
        unavailable["ndi"] = f"{type(error).__name__}: {error}"
    shm = [c.median_ms for c in costs if c.bridge.startswith("shm")]
    return {
        "size": f"{SIZE}x{SIZE}",
        "costs": [asdict(c) for c in costs],
        "unavailable": unavailable,
        "shm_within_budget": bool(shm) and max(shm) <= SHM_BUDGET_MS,
    }


def _timed(
    name: str, write: Callable[[Frame], None], images: list[np.ndarray], frames: int, note: str = ""
) -> BridgeCost:
    for k in range(3):  # warm-up: first writes allocate
        write(Frame(images[k % len(images)], k, 0.0))
    times = []
    for index in range(frames):
        frame = Frame(images[index % len(images)], index, 0.0)
        start = time.perf_counter()
        write(frame)
        times.append((time.perf_counter() - start) * 1000.0)
    p95 = statistics.quantiles(times, n=20)[-1] if len(times) >= 20 else max(times)
    return BridgeCost(name, statistics.median(times), p95, frames, note)


def _shm_costs(images: list[np.ndarray], frames: int) -> list[BridgeCost]:
    from bridges.shm import ShmSink

    costs = []
    for channels in (3, 4):
        sink = ShmSink(f"dwbench-{uuid.uuid4().hex[:8]}", channels=channels)
        sink.open()
        try:
            costs.append(_timed(f"shm ({'RGB' if channels == 3 else 'RGBA'})", sink.write, images, frames))
        finally:
            sink.close()
    return costs


def _ndi_costs(images: list[np.ndarray], frames: int) -> list[BridgeCost]:
    from bridges.ndi import NdiSink

    costs = []
    for fmt in ("rgba", "uyvy"):
        sink = NdiSink(f"dwbench-{fmt}-{uuid.uuid4().hex[:6]}", fmt=fmt)
        sink.open()
        sink.write(Frame(images[0], 0, 0.0))  # the sender exists from the first frame
        receiver = _connect_receiver(sink)
        audience = "1 receiver" if receiver is not None else "no receiver connected: NDI may skip compressing"
        try:
            costs.append(_timed(f"ndi ({fmt})", sink.write, images, frames, f"async; {audience}"))

            def write_sync(frame: Frame, sink: NdiSink = sink) -> None:  # the same, compression on this thread
                sink._sender.write_video(sink._convert(frame.image).reshape(-1))

            costs.append(_timed(f"ndi ({fmt}, sync)", write_sync, images, frames, f"compression included; {audience}"))
        finally:
            if receiver is not None:
                receiver.disconnect()
            sink.close()
    return costs


def _connect_receiver(sink: Any, timeout: float = 5.0) -> Any:
    """A cyndilib Receiver connected to the bench's sender, or None if discovery did not find it in time."""
    import cyndilib
    from cyndilib.wrapper.ndi_recv import RecvBandwidth, RecvColorFormat

    from bridges.ndi import matching_source

    finder, deadline = cyndilib.Finder(), time.perf_counter() + timeout
    while (found := matching_source(finder.update_sources(), sink.sender_name)) is None:
        if time.perf_counter() > deadline:
            return None
        time.sleep(0.05)
    receiver = cyndilib.Receiver(color_format=RecvColorFormat.RGBX_RGBA, bandwidth=RecvBandwidth.highest)
    receiver.frame_sync.set_video_frame(cyndilib.VideoFrameSync())
    receiver.set_source(finder.get_source(found))
    while sink._sender.get_num_connections(0) < 1:
        if time.perf_counter() > deadline:
            receiver.disconnect()
            return None
        time.sleep(0.05)
    return receiver


def format_bridge_costs(report: dict[str, Any]) -> list[str]:
    lines = [f"bridge cost per frame at {report['size']} (conversion + send, median / p95):"]
    for cost in report["costs"]:
        note = f"  ({cost['note']})" if cost["note"] else ""
        lines.append(f"  {cost['bridge']:<18} {cost['median_ms']:7.3f} ms / {cost['p95_ms']:7.3f} ms{note}")
    for bridge, why in report["unavailable"].items():
        lines.append(f"  {bridge:<18} not measured: {why}")
    verdict = "within" if report["shm_within_budget"] else "OVER"
    lines.append(f"  shm is {verdict} its {SHM_BUDGET_MS:g} ms budget")
    return lines
