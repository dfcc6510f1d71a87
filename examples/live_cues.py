"""A cue list driving the live engine from Python: what an OSC controller will do over the network.

    python examples/live_cues.py [--preset offline-demo] [--output preview:] [--seconds 12]

The engine runs on its own thread; this thread sends cues (each validated at once, applied between frames) and
the engine reports each one's outcome as an event (logged here, as OSC will send it back). The exit code is 1 if
the engine thread ended with an exception or a cue was not applied.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time

from engine.config.presets import load_preset
from engine.live.events import EngineEvent
from engine.live.loop import LiveEngine

CUES: list[tuple[float, str, dict]] = [  # (seconds from start, what, arguments)
    (2.0, "prompt", {"path": "prompt.text", "value": "a forest of glass, morning light", "seconds": 2.0}),
    (4.0, "guidance", {"path": "prompt.guidance", "value": 1.8, "frames": 30}),
    (6.0, "blend", {"items": [("a forest of glass", 0.6), ("a neon city at night", 0.4)]}),
    (8.0, "seed morph", {"path": "prompt.seed", "value": 7, "seconds": 2.0}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="offline-demo")
    parser.add_argument("--output", default="preview:")
    parser.add_argument("--seconds", type=float, default=12.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    engine = LiveEngine(load_preset(args.preset, [f"io.outputs=['{args.output}']"]))
    outcomes: dict[int, EngineEvent] = {}  # request id -> its event

    def report(event: EngineEvent) -> None:  # on the engine thread: quick, never blocks
        if event.request_id is not None:
            outcomes[event.request_id] = event
        if event.kind == "error":
            logging.error("cue not applied: %s", event.message)
        else:
            logging.info("applied %s", event.path)

    engine.add_listener(report)
    failures: list[BaseException] = []

    def run() -> None:
        try:
            engine.run(duration=args.seconds)
        except BaseException as error:  # reported below: the exit code says the show ended early
            failures.append(error)
            raise

    loop = threading.Thread(target=run, name="dreamwire-engine")
    loop.start()
    start = time.perf_counter()
    sent = []
    for at, what, cue in CUES:
        time.sleep(max(0.0, start + at - time.perf_counter()))
        logging.info("cue %.0f s: %s", at, what)
        if what == "blend":
            sent.append(engine.blend_prompts(cue["items"], method="slerp"))
        else:
            sent.append(engine.set(cue["path"], cue["value"], seconds=cue.get("seconds"), frames=cue.get("frames")))
    loop.join()
    logging.info("done: %d frames, %s", engine.frame_number, engine.status())
    applied = [rid for rid in sent if rid in outcomes and outcomes[rid].kind == "applied"]
    if failures or len(applied) != len(sent):
        logging.error("%d of %d cues applied; engine thread %s", len(applied), len(sent), failures or "ok")
        sys.exit(1)


if __name__ == "__main__":
    main()
