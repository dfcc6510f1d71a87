"""Feed dreamwire from another Python program through shared memory (`--input shm:NAME`).

    python examples/shm_writer.py dreamwire-in --size 512x512 --fps 30 &
    dreamwire run --preset offline-demo --input shm: --output preview:      # shm: alone reads NAME-in

Writes a moving diagonal gradient (gradient() below: every pixel of frame i is known, which the tests use) with
dreamwire's ShmWriter; the segment is removed when the writer stops (Ctrl-C or --frames).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bridges.shm import ShmWriter


def gradient(index: int, width: int, height: int) -> np.ndarray:
    """Frame `index`: (height, width, 3) uint8, red = (row + column + index) mod 256, green and blue offset."""
    base = (np.arange(height)[:, None] + np.arange(width)[None, :] + index) % 256
    return np.stack([base, (base + 85) % 256, (base + 170) % 256], axis=2).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="the segment name (dreamwire reads it with --input shm:NAME)")
    parser.add_argument("--size", default="512x512", help="WIDTHxHEIGHT (default 512x512)")
    parser.add_argument("--fps", type=float, default=30.0, help="frames per second (0: as fast as possible)")
    parser.add_argument("--frames", type=int, default=0, help="stop after this many frames (0: until Ctrl-C)")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    writer = ShmWriter(args.name, width, height)
    start, index = time.perf_counter(), 0
    try:
        while not args.frames or index < args.frames:
            writer.write(gradient(index, width, height))
            index += 1
            if args.fps:
                time.sleep(max(0.0, start + index / args.fps - time.perf_counter()))  # drift-free pacing
    except KeyboardInterrupt:
        pass
    finally:
        writer.close()  # removes the segment
    print(f"wrote {index} frames to shm:{args.name}")


if __name__ == "__main__":
    main()
