"""`dreamwire run`: the live engine on this thread until Ctrl-C, SIGTERM (Ctrl-Break on Windows) or --duration;
exit 0 on a clean stop."""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

from bridges.uri import open_sink, open_source
from engine.config.schema import Preset
from engine.control.transports import Controls, check_available
from engine.core.instance import DEFAULT_INSTANCE, Instance
from engine.live.loop import LiveEngine
from engine.live.metrics import StatusLinePrinter

log = logging.getLogger(__name__)

ENGINE_SWITCH_INTERVAL = 0.001  # s: Python's thread switch interval while `run` runs (the default is 0.005)


def run_live(preset: Preset, duration: float | None = None, instance: Instance = DEFAULT_INSTANCE) -> None:
    # Build (not open) every bridge first: a missing platform module or a bad URI fails in one line before the
    # model loads. The engine builds its own when it starts.
    open_source(preset.io.input, instance)
    for uri in preset.io.outputs:
        open_sink(uri, instance)
    check_available(preset)  # MIDI or Link configured without its library (or ALSA): one line, before the model
    preset = with_instance_osc_ports(preset, instance)
    engine = LiveEngine(preset, instance=instance)
    controls = start_controls(engine, preset)

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        engine.stop()

    previous = {sig: signal.signal(sig, stop) for sig in stop_signals()}
    status = StatusLinePrinter(engine.metrics)
    status.start()
    # The engine thread gives up the GIL in every torch op; while control threads are busy (a burst of OSC
    # messages) each op waited up to the 5 ms default to get it back, which froze the picture for seconds.
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(ENGINE_SWITCH_INTERVAL)
    try:
        engine.run(duration)
    finally:
        sys.setswitchinterval(switch_interval)
        controls.close()
        status.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("stopped after %d frames", engine.frame_number)


def with_instance_osc_ports(preset: Preset, instance: Instance) -> Preset:
    """The instance's OSC and feedback ports (engine/core/instance.py), unless the preset or --set names them."""
    given = preset.osc.model_fields_set
    update: dict[str, object] = {}
    if "port" not in given:
        update["port"] = instance.osc_port
    if "feedback" not in given and preset.osc.feedback:
        host = preset.osc.feedback.rsplit(":", 1)[0]
        update["feedback"] = f"{host}:{instance.osc_feedback_port}"
    return preset.model_copy(update={"osc": preset.osc.model_copy(update=update)}) if update else preset


def start_controls(engine: LiveEngine, preset: Preset) -> Controls:
    """The control surface and its transports (engine/control/transports.py: OSC, MIDI, the tempo source); a port
    that cannot be bound stops here, with the engine closed."""
    try:
        return Controls.start(engine, preset)
    except BaseException:
        engine.close()
        raise


def stop_signals() -> list[signal.Signals]:
    """The signals that stop `run` cleanly: Ctrl-C (SIGINT) everywhere; on Windows Ctrl-Break (SIGBREAK) too,
    and not SIGTERM, which nothing delivers there (a kill is TerminateProcess, which no handler sees); on
    Linux and macOS SIGTERM (kill, systemd, docker stop)."""
    if sys.platform == "win32":
        return [signal.SIGINT, signal.SIGBREAK]
    return [signal.SIGINT, signal.SIGTERM]
