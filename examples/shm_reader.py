"""Read the frames dreamwire writes to shared memory (`--output shm:NAME`), with numpy and the standard library only.

    dreamwire run --preset offline-demo --output shm:dreamwire
    python examples/shm_reader.py dreamwire --frames 100          # prints what arrives
    python examples/shm_reader.py dreamwire --frames 5 --save last.npy

This file does not import dreamwire, so a tool with its own Python (TouchDesigner: see
examples/touchdesigner_script_top.py) can use it as it is. The layout it reads is documented in bridges/shm.py:
a 64-byte header, then two pixel slots written seqlock-style, so a reader never keeps a half-written frame.
The writer stores the header's magic last: a segment whose magic is still zero is "not ready yet" (FrameReader
waits for it up to `wait` seconds, then raises HeaderNotReady), any other magic is "not ours" (ValueError).
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
NOT_PUBLISHED = b"\0\0\0\0"  # the magic of a segment whose writer is still writing the header


class HeaderNotReady(Exception):
    """The segment exists, but its writer has not written the header yet: attach again in a moment."""


def _attach(name: str) -> shared_memory.SharedMemory:
    """Map segment `name` (FileNotFoundError if there is none) without removing it when this process exits."""
    try:
        if sys.version_info >= (3, 13):
            return shared_memory.SharedMemory(name, track=False)
        segment = shared_memory.SharedMemory(name)
    except ValueError:  # "cannot mmap an empty file": POSIX creates a segment, then sizes it
        raise HeaderNotReady(f"shared memory {name!r} is still being created") from None
    if os.name == "posix":  # else this process would remove the writer's segment when it exits
        from multiprocessing import resource_tracker

        resource_tracker.unregister(segment._name, "shared_memory")
    return segment


def _read_header(segment: shared_memory.SharedMemory, name: str) -> tuple[int, int, int]:
    """(height, width, channels) of a published header; HeaderNotReady or ValueError (not ours) otherwise."""
    if segment.size < HEADER_BYTES:
        raise ValueError(f"shared memory {name!r} is not a dreamwire frame segment ({segment.size} bytes)")
    (magic,) = struct.unpack_from("<4s", segment.buf)  # first and alone: the writer stores it last
    if magic == NOT_PUBLISHED:
        raise HeaderNotReady(f"shared memory {name!r}: its writer has not written the header yet")
    if magic != MAGIC:
        raise ValueError(f"shared memory {name!r} is not a dreamwire frame segment (magic {magic!r})")
    version, header, width, height, channels, _dtype = struct.unpack_from("<HHIIII", segment.buf, 4)
    if (version, header) != (VERSION, HEADER_BYTES):
        raise ValueError(f"shared memory {name!r} has dreamwire layout version {version}; this reads {VERSION}")
    if channels not in (3, 4) or segment.size < HEADER_BYTES + 2 * width * height * channels:
        raise ValueError(f"shared memory {name!r}: its header says {width}x{height}x{channels}, larger than it is")
    return height, width, channels


class FrameReader:
    """Attach to segment `name`; latest() returns each new frame once, as (H, W, C) uint8 (C = 3 RGB or 4 RGBA).

    A segment whose writer is still starting is waited for up to `wait` seconds (0: not at all, for a caller
    that tries again later, like a TouchDesigner cook), then HeaderNotReady. A segment that is not dreamwire's:
    ValueError. No segment: FileNotFoundError.
    """

    def __init__(self, name: str, wait: float = 1.0) -> None:
        deadline = time.monotonic() + wait
        while True:
            try:
                self.segment = _attach(name)
                try:
                    self.shape = _read_header(self.segment, name)
                except BaseException:
                    self.segment.close()
                    raise
                break
            except HeaderNotReady:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.002)
        height, width, channels = self.shape
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
