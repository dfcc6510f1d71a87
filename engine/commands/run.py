"""`dreamwire run`: the live engine on this thread until Ctrl-C, SIGTERM or --duration; exit 0 on a clean stop."""

from __future__ import annotations

import logging
import signal
from types import FrameType

from engine.config.schema import Preset
from engine.live.loop import LiveEngine
from engine.live.metrics import StatusLinePrinter
from engine.live.osc_surface import OscSurface

log = logging.getLogger(__name__)


def run_live(preset: Preset, duration: float | None = None) -> None:
    engine = LiveEngine(preset)
    osc = start_osc(engine, preset)

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        engine.stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    status = StatusLinePrinter(engine.metrics)
    status.start()
    try:
        engine.run(duration)
    finally:
        if osc is not None:
            osc.close()
        status.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("stopped after %d frames", engine.frame_number)


def start_osc(engine: LiveEngine, preset: Preset) -> OscSurface | None:
    """The OSC control surface (osc.enabled); a port that cannot be bound stops here, with the engine closed."""
    if not preset.osc.enabled:
        return None
    try:
        return OscSurface.start(engine, preset.osc)
    except BaseException:
        engine.close()
        raise
