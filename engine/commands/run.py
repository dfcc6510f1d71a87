"""`dreamwire run`: the live engine on this thread until Ctrl-C, SIGTERM or --duration; exit 0 on a clean stop."""

from __future__ import annotations

import logging
import signal
from types import FrameType

from bridges.uri import open_sink, open_source
from engine.config.schema import Preset
from engine.core.instance import DEFAULT_INSTANCE, Instance
from engine.live.loop import LiveEngine
from engine.live.metrics import StatusLinePrinter

log = logging.getLogger(__name__)


def run_live(preset: Preset, duration: float | None = None, instance: Instance = DEFAULT_INSTANCE) -> None:
    # Build (not open) every bridge first: a missing platform module or a bad URI fails in one line before the
    # model loads. The engine builds its own when it starts.
    open_source(preset.io.input, instance)
    for uri in preset.io.outputs:
        open_sink(uri, instance)
    engine = LiveEngine(preset, instance=instance)

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        engine.stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    status = StatusLinePrinter(engine.metrics)
    status.start()
    try:
        engine.run(duration)
    finally:
        status.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("stopped after %d frames", engine.frame_number)
