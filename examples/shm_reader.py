"""Read the frames dreamwire writes to shared memory (`--output shm:NAME`), with numpy and the standard library only.

    dreamwire run --preset offline-demo --output shm:dreamwire
    python examples/shm_reader.py dreamwire --frames 100          # prints what arrives
    python examples/shm_reader.py dreamwire --frames 5 --save last.npy

This file does not import dreamwire, so a tool with its own Python (TouchDesigner: see
examples/touchdesigner_script_top.py) can use it as it is. The layout it reads is documented in bridges/shm.py:
a 64-byte header, then two pixel slots written seqlock-style, so a reader never keeps a half-written frame.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
from multiprocessing import shared_memory

import numpy as np

MAGIC, VERSION, HEADER_BYTES, LIVE = b"DWSM", 1, 64, 1


class FrameReader:
    """Attach to segment `name`; latest() returns each new frame once, as (H, W, C) uint8 (C = 3 RGB or 4 RGBA)."""

    def __init__(self, name: str) -> None:
        if sys.version_info >= (3, 13):
            self.segment = shared_memory.SharedMemory(name, track=False)
        else:
            self.segment = shared_memory.SharedMemory(name)
            if os.name == "posix":  # else this process would remove the writer's segment when it exits
                from multiprocessing import resource_tracker

                resource_tracker.unregister(self.segment._name, "shared_memory")
        magic, version, header, width, height, channels, _dtype = struct.unpack_from("<4sHHIIII", self.segment.buf)
        if (magic, version, header) != (MAGIC, VERSION, HEADER_BYTES):
            self.segment.close()
            raise ValueError(f"shared memory {name!r} is not a dreamwire frame segment (version {VERSION})")
        self.shape = (height, width, channels)
        size = height * width * channels
        buf = self.segment.buf
        self._state = np.ndarray((1,), "<u4", buffer=buf, offset=24)
        self._sequence = np.ndarray((1,), "<u8", buffer=buf, offset=32)
        self._slots = [np.ndarray(self.shape, np.uint8, buffer=buf, offset=HEADER_BYTES + k * size) for k in (0, 1)]
        self.frame_number = 0  # the writer's number of the frame last returned

    @property
    def writer_closed(self) -> bool:
        """The writer stopped or changed size: make a new FrameReader."""
        return int(self._state[0]) != LIVE

    def latest(self) -> np.ndarray | None:
        """The newest complete frame if it is newer than the last one returned, else None."""
        while True:
            n = int(self._sequence[0]) // 2  # frames complete; frame n lies in slot n % 2
            if n <= self.frame_number:
                return None
            image = self._slots[n % 2].copy()
            if int(self._sequence[0]) < 2 * n + 3:  # the writer has not started over this slot meanwhile
                self.frame_number = n
                return image

    def close(self) -> None:
        del self._state, self._sequence, self._slots  # numpy views must go before the mapping closes
        self.segment.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="the segment name (shm:NAME)")
    parser.add_argument("--frames", type=int, default=100, help="stop after this many frames")
    parser.add_argument("--timeout", type=float, default=10.0, help="give up after this many seconds")
    parser.add_argument("--save", help="save the frames read as an (N, H, W, C) .npy")
    args = parser.parse_args()
    reader = FrameReader(args.name)
    frames: list[np.ndarray] = []
    numbers: list[int] = []
    start = time.perf_counter()
    try:
        while len(frames) < args.frames and time.perf_counter() - start < args.timeout and not reader.writer_closed:
            image = reader.latest()
            if image is None:
                time.sleep(0.001)
                continue
            frames.append(image)
            numbers.append(reader.frame_number)
    finally:
        reader.close()
    seconds = time.perf_counter() - start
    print(f"{len(frames)} frames of {reader.shape} in {seconds:.2f} s; writer frame numbers {numbers[:3]}...")
    if args.save and frames:
        np.save(args.save, np.stack(frames))


if __name__ == "__main__":
    main()
