"""A cue list driving the live engine from Python: what an OSC controller will do over the network.

    python examples/live_cues.py [--preset offline-demo] [--output preview:] [--seconds 12]

The engine runs on its own thread; this thread sends cues (each validated at once, applied between frames).
"""

from __future__ import annotations

import argparse
import logging
import threading
import time

from engine.config.presets import load_preset
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
    loop = threading.Thread(target=engine.run, kwargs={"duration": args.seconds}, name="dreamwire-engine")
    loop.start()
    start = time.perf_counter()
    for at, what, cue in CUES:
        time.sleep(max(0.0, start + at - time.perf_counter()))
        logging.info("cue %.0f s: %s", at, what)
        if what == "blend":
            engine.blend_prompts(cue["items"], method="slerp")
        else:
            engine.set(cue["path"], cue["value"], seconds=cue.get("seconds"), frames=cue.get("frames"))
    loop.join()
    logging.info("done: %d frames, %s", engine.frame_number, engine.status())


if __name__ == "__main__":
    main()
