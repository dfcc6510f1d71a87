"""A python-osc controller that plays a short cue list with transitions against `dreamwire run`, and prints
what comes back on the feedback port (echoes, status, errors).

    dreamwire run --preset offline-demo                # OSC on 127.0.0.1:9000, feedback to 127.0.0.1:9001
    python examples/python/osc_controller.py [--port 9000] [--listen 9001] [--speed 1]

Exit code 0 when every cue was accepted, 1 when dreamwire answered with an /error, 2 when it did not answer.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from typing import Any

from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_server import BlockingOSCUDPServer
from pythonosc.udp_client import SimpleUDPClient

NS = "/dreamwire"
CUES: list[tuple[float, str, list[Any]]] = [  # (seconds from start, address, arguments)
    (0.0, "/transition", [2.0]),  # the changes that follow morph over 2 s
    (0.0, "/prompt/text", ["a forest of glass, morning light"]),
    (1.0, "/transition/frames", [30]),  # ... now over 30 output frames
    (1.0, "/prompt/guidance", [1.8]),
    (2.0, "/transition", [1.0]),
    (2.0, "/prompt/blend", ["a forest of glass", 0.6, "a neon city at night", 0.4]),
    (3.0, "/seed", [7]),  # a short alias, as existing patches send it
    (3.5, "/transition", [0.0]),  # cuts from here on
    (3.5, "/strength", [0.6]),
    (4.0, "/ssf", [1]),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000, help="dreamwire's OSC port (osc.port)")
    parser.add_argument("--listen", type=int, default=9001, help="the feedback port (osc.feedback)")
    parser.add_argument("--speed", type=float, default=1.0, help="play the cues this many times faster")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    errors: list[str] = []
    answered = threading.Event()

    def received(address: str, *values: Any) -> None:
        logging.info("<- %s %s", address, list(values))
        if address == f"{NS}/error":
            errors.append(values[0])
        elif address == f"{NS}/prompt/guidance":
            answered.set()

    dispatcher = Dispatcher(strict_timing=False)
    dispatcher.set_default_handler(received)
    feedback = BlockingOSCUDPServer((args.host, args.listen), dispatcher)
    threading.Thread(target=feedback.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    client = SimpleUDPClient(args.host, args.port)
    start = time.perf_counter()
    for at, address, values in CUES:
        time.sleep(max(0.0, start + at / args.speed - time.perf_counter()))
        logging.info("cue %.1f s: %s %s", at, address, values)
        client.send_message(NS + address, values)
    client.send_message(f"{NS}/get", f"{NS}/prompt/guidance")  # answered at the feedback port
    ok = answered.wait(timeout=10.0)
    time.sleep(0.2)  # late errors
    feedback.shutdown()
    feedback.server_close()
    if not ok:
        logging.info("no answer from dreamwire on port %d", args.listen)
        return 2
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
