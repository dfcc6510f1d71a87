"""`dreamwire run`: the live engine on this thread until Ctrl-C, SIGTERM (Ctrl-Break on Windows) or --duration;
exit 0 on a clean stop."""

from __future__ import annotations

import logging
import signal
import sys
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

    previous = {sig: signal.signal(sig, stop) for sig in stop_signals()}
    status = StatusLinePrinter(engine.metrics)
    status.start()
    try:
        engine.run(duration)
    finally:
        status.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("stopped after %d frames", engine.frame_number)


def stop_signals() -> list[signal.Signals]:
    """The signals that stop `run` cleanly: Ctrl-C (SIGINT) everywhere; on Windows Ctrl-Break (SIGBREAK) too,
    and not SIGTERM, which nothing delivers there (a kill is TerminateProcess, which no handler sees); on
    Linux and macOS SIGTERM (kill, systemd, docker stop)."""
    if sys.platform == "win32":
        return [signal.SIGINT, signal.SIGBREAK]
    return [signal.SIGINT, signal.SIGTERM]
