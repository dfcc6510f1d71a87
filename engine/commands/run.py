"""`dreamwire run`: the live engine on this thread until Ctrl-C, SIGTERM or --duration; exit 0 on a clean stop."""

from __future__ import annotations

import logging
import signal
from types import FrameType

from engine.config.schema import Preset
from engine.live.loop import LiveEngine
from engine.live.metrics import StatusLinePrinter

log = logging.getLogger(__name__)


def run_live(preset: Preset, duration: float | None = None) -> None:
    engine = LiveEngine(preset)

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
