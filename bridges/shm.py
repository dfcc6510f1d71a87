"""shm: bridge: frames through a named shared-memory segment (multiprocessing.shared_memory), both ways.

For local tools: TouchDesigner's Script TOP (examples/touchdesigner_script_top.py), Python, anything that can map
shared memory. `shm:NAME` as an output creates the segment NAME and removes it when the sink closes (a clean exit);
as an input it attaches to a segment another process writes. examples/shm_reader.py reads the layout without
dreamwire installed.

Segment layout (little-endian; a 64-byte header, then two pixel slots):

    offset size   field
    0      4      magic b"DWSM"
    4      2      version: 1
    6      2      header size in bytes: 64 (the pixels start here)
    8      4      width
    12     4      height
    16     4      channels: 3 = RGB, 4 = RGBA (alpha 255)
    20     4      dtype: 1 = uint8
    24     4      state: 1 = live, 2 = closed (the writer stopped, or changed size: attach again)
    28     4      the writer's process id
    32     8      sequence s: frame n (1, 2, ...) is complete once s = 2n, and lies in slot n % 2; s = 2n + 1 while
                  frame n + 1 is written into the other slot
    40     8      segment id: random per segment, so a reader that attaches again can tell a new writer
    48     16     reserved, 0
    64     W·H·C  slot 0, then slot 1: rows top to bottom, channels interleaved

Publishing the header: a new segment is all zero (the OS zero-fills it). The writer fills in every field above
except the magic, then stores the magic last, as one aligned 4-byte store. A reader attaches, reads the magic
first and alone, then the rest:
    magic all zero (or a segment of 0 bytes: POSIX sizes it just after creating it): not ready yet, the writer is
        starting; wait a moment (a few ms) and attach again. dreamwire's reader waits up to 1 s (READY_WAIT_S).
    magic b"DWSM": read the other fields; a version, header size or dtype other than the above is a newer or
        foreign layout: a one-line error, never a wait.
    any other magic: not a dreamwire segment (another program's, with the same name): a one-line error.

Reading (a seqlock over two slots): read s, take n = s // 2, copy slot n % 2, read s again; the copy is whole
unless s reached 2n + 3 meanwhile (the writer began frame n + 2 in that same slot): then read again. The writer
never waits for a reader, and a reader only retries when the writer laps it.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import struct
import sys
import time
from multiprocessing import shared_memory

import numpy as np

from bridges.pixels import rgba_to_rgb
from bridges.uri import TIMEOUT_HELP, ParsedUri
from engine.core.errors import DreamwireError
from engine.core.frames import Frame

log = logging.getLogger(__name__)

MAGIC = b"DWSM"
NOT_PUBLISHED = b"\0\0\0\0"  # the magic of a segment whose writer has not finished its header yet
VERSION = 1
HEADER_BYTES = 64
DTYPE_UINT8 = 1
LIVE, CLOSED = 1, 2
_MAGIC = struct.Struct("<4s")  # offset 0: read first and alone (the writer stores it last)
_FIELDS = struct.Struct("<HHIIII")  # version, header size, width, height, channels, dtype (offsets 4..23)
_STATE, _PID, _SEQUENCE, _SEGMENT_ID = 24, 28, 32, 40
POLL_S = 0.0005  # seconds between checks for a new frame while reading
READY_WAIT_S = 1.0  # how long a reader waits for a new segment's header (a writer publishes it within microseconds)
HEADER_POLL_S = 0.002  # seconds between looks at a header that is not published yet
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,30}")
_CREATED: set[str] = set()  # segments this process created (and its resource tracker removes if it dies)


class ShmClosed(DreamwireError):
    """The writer closed the segment (it stopped or changed size)."""


class ShmNotReady(DreamwireError):
    """The segment exists but its writer has not published the header yet (a zero magic, or 0 bytes)."""


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise DreamwireError(f"shm: segment name {name!r} is invalid: use 1 to 30 letters, digits, '.', '-' or '_'")
    return name


def attach(name: str) -> shared_memory.SharedMemory:
    """Map an existing segment without taking ownership: it is not removed when this process exits."""
    try:
        if sys.version_info >= (3, 13):
            return shared_memory.SharedMemory(name, track=False)
        segment = shared_memory.SharedMemory(name)
    except FileNotFoundError:
        raise DreamwireError(f"shm: no segment named {name!r} (is its writer running?)") from None
    except ValueError:  # "cannot mmap an empty file": POSIX creates the segment, then sizes it
        raise ShmNotReady(f"shm: segment {name!r} is still being created (0 bytes)") from None
    if os.name == "posix" and name not in _CREATED:
        # Before 3.13 attaching registers the segment for removal when this process exits (CPython gh-82300).
        from multiprocessing import resource_tracker

        resource_tracker.unregister(segment._name, "shared_memory")  # type: ignore[attr-defined]
    return segment


class _Views:
    """numpy views of a mapped segment's fields and slots; drop() releases them so the mapping can close."""

    def __init__(self, segment: shared_memory.SharedMemory, shape: tuple[int, int, int]) -> None:
        buf = segment.buf
        self.state = np.ndarray((1,), "<u4", buffer=buf, offset=_STATE)
        self.sequence = np.ndarray((1,), "<u8", buffer=buf, offset=_SEQUENCE)  # aligned 8-byte loads and stores
        self.segment_id = int(np.ndarray((1,), "<u8", buffer=buf, offset=_SEGMENT_ID)[0])
        size = shape[0] * shape[1] * shape[2]
        self.slots = [np.ndarray(shape, np.uint8, buffer=buf, offset=HEADER_BYTES + k * size) for k in (0, 1)]

    def drop(self) -> None:
        del self.state, self.sequence, self.slots


class ShmWriter:
    """Creates segment `name` for (height, width, channels) uint8 frames; write() publishes one, close() removes it."""

    def __init__(self, name: str, width: int, height: int, channels: int = 3) -> None:
        if channels not in (3, 4):
            raise DreamwireError(f"shm: channels={channels} is invalid: use 3 (RGB) or 4 (RGBA)")
        self.name, self.shape = check_name(name), (height, width, channels)
        size = HEADER_BYTES + 2 * height * width * channels
        self._segment = _create(self.name, size)  # all zero: readers wait while the magic is zero
        buf = self._segment.buf
        _FIELDS.pack_into(buf, _MAGIC.size, VERSION, HEADER_BYTES, width, height, channels, DTYPE_UINT8)
        struct.pack_into("<IIQQ", buf, _STATE, LIVE, os.getpid() & 0xFFFFFFFF, 0, secrets.randbits(64))
        self._views: _Views | None = _Views(self._segment, self.shape)
        if channels == 4:
            for slot in self._views.slots:
                slot[:, :, 3] = 255  # alpha is constant: written once, so each frame copies only RGB
        # Published last, in one aligned 4-byte store: a reader that sees the magic sees every field before it.
        np.ndarray((1,), "<u4", buffer=buf, offset=0)[0] = int.from_bytes(MAGIC, "little")
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        """rgb: (height, width, 3) uint8, the segment's size."""
        views = self._views
        if views is None:
            raise DreamwireError(f"shm {self.name}: write after close")
        if rgb.shape != (*self.shape[:2], 3):
            raise DreamwireError(f"shm {self.name}: frame shape {rgb.shape} is not {(*self.shape[:2], 3)}")
        n = self.frames + 1
        views.sequence[0] = 2 * n - 1  # frame n is being written into slot n % 2
        slot = views.slots[n % 2]
        if slot.shape[2] == 3:
            np.copyto(slot, rgb)
        else:  # RGBA: alpha is already 255; one channel at a time beats numpy's strided 3-of-4 copy
            for channel in range(3):
                slot[:, :, channel] = rgb[:, :, channel]
        views.sequence[0] = 2 * n  # frame n is complete
        self.frames = n

    def close(self) -> None:
        """Mark the segment closed for readers, then remove it (idempotent)."""
        if self._views is None:
            return
        self._views.state[0] = CLOSED
        self._views.drop()
        self._views = None
        self._segment.close()
        _unlink(self._segment)
        _CREATED.discard(self.name)


def _create(name: str, size: int) -> shared_memory.SharedMemory:
    """A new segment; one left behind by a writer that died (or closed) is replaced, a live writer's is refused."""
    try:
        segment = shared_memory.SharedMemory(name, create=True, size=size)
    except FileExistsError:
        segment = _replace_stale(name, size)
    _CREATED.add(name)
    return segment


def _replace_stale(name: str, size: int) -> shared_memory.SharedMemory:
    try:
        old = attach(name)
    except ShmNotReady:  # 0 bytes: a writer between creating and sizing it, or one that died there
        magic, state, pid = NOT_PUBLISHED, 0, 0
    else:
        try:
            if old.size < HEADER_BYTES:
                magic, state, pid = b"?", 0, 0
            else:
                magic, state, pid = _MAGIC.unpack_from(old.buf)[0], *struct.unpack_from("<II", old.buf, _STATE)
        finally:
            old.close()
    if magic not in (MAGIC, NOT_PUBLISHED):
        raise DreamwireError(
            f"shm: a segment named {name!r} exists and is not a dreamwire frame segment: use another shm:NAME"
        )
    if state == LIVE and pid and _alive(pid):  # a zero magic here is a live writer still publishing its header
        raise DreamwireError(
            f"shm: segment {name!r} is being written by process {pid}: another dreamwire with the same name? "
            "(use another shm:NAME or --name)"
        )
    if os.name != "posix":  # Windows: the mapping lives on while a reader holds it; it goes when they let go
        raise DreamwireError(f"shm: segment {name!r} is still held by a reader of the last writer; retrying")
    log.info("shm %s: replacing a segment left behind by process %d", name, pid)
    stale = shared_memory.SharedMemory(name)  # tracked, so that unlink() below leaves the tracker balanced
    stale.close()
    _unlink(stale)
    return shared_memory.SharedMemory(name, create=True, size=size)


def _unlink(segment: shared_memory.SharedMemory) -> None:
    try:
        segment.unlink()  # POSIX: removes the name now; Windows: nothing to do (gone with the last handle)
    except FileNotFoundError:
        pass


def _alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # no cheap check without side effects on Windows; segments there die with their processes
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _attach_published(name: str) -> tuple[shared_memory.SharedMemory, tuple[int, int, int]]:
    """The segment and its (width, height, channels), once its header is published; ShmNotReady before that."""
    segment = attach(name)
    try:
        if segment.size < HEADER_BYTES:
            raise DreamwireError(f"shm: segment {name!r} is not a dreamwire frame segment ({segment.size} bytes)")
        (magic,) = _MAGIC.unpack_from(segment.buf)  # first and alone: every other field is written before it
        if magic == NOT_PUBLISHED:
            raise ShmNotReady(f"shm: segment {name!r} has no header yet")
        if magic != MAGIC:
            raise DreamwireError(f"shm: segment {name!r} is not a dreamwire frame segment (magic {magic!r})")
        version, header, width, height, channels, dtype = _FIELDS.unpack_from(segment.buf, _MAGIC.size)
        if (version, header, dtype) != (VERSION, HEADER_BYTES, DTYPE_UINT8):
            raise DreamwireError(
                f"shm: segment {name!r} has layout version {version} (header {header} bytes, dtype {dtype}); "
                f"this dreamwire reads version {VERSION} ({HEADER_BYTES} bytes, dtype {DTYPE_UINT8})"
            )
        if channels not in (3, 4) or segment.size < HEADER_BYTES + 2 * width * height * channels:
            raise DreamwireError(f"shm: segment {name!r} header says {width}x{height}x{channels}: larger than it is")
    except BaseException:
        segment.close()
        raise
    return segment, (width, height, channels)


class ShmReader:
    """Attaches to segment `name`; read_new() returns the newest complete frame once."""

    def __init__(self, name: str, wait: float = READY_WAIT_S) -> None:
        """Waits up to `wait` seconds for a new segment's header (ShmNotReady after that); a segment that is not
        ours, or not our version, is refused at once."""
        self.name = check_name(name)
        deadline, waited = time.monotonic() + wait, False
        while True:
            try:
                self._segment, (width, height, channels) = _attach_published(self.name)
                break
            except ShmNotReady:
                if time.monotonic() >= deadline:
                    raise ShmNotReady(
                        f"shm: segment {name!r} exists, but its writer has not written the header within {wait:g} s "
                        "(still starting, or it died while starting)"
                    ) from None
                if not waited:
                    log.debug("shm %s: the writer has not published the header yet; waiting", name)
                    waited = True
                time.sleep(HEADER_POLL_S)
        self.shape = (height, width, channels)
        self._views: _Views | None = _Views(self._segment, self.shape)
        self.segment_id = self._views.segment_id
        self.torn = 0  # copies thrown away because the writer lapped this reader

    def read_new(self, after: int) -> tuple[int, np.ndarray] | None:
        """(n, a copy of frame n) for the newest complete frame n > after; None if there is none yet."""
        views = self._views
        if views is None:
            raise DreamwireError(f"shm {self.name}: read after close")
        while True:
            if views.state[0] != LIVE:
                raise ShmClosed(f"shm: the writer of {self.name!r} closed it (stopped, or changed size)")
            n = int(views.sequence[0]) // 2
            if n <= after:
                return None
            image = views.slots[n % 2].copy()
            if int(views.sequence[0]) < 2 * n + 3:
                return n, image
            self.torn += 1  # the writer began frame n + 2 in this slot while we copied: take the newer one

    def close(self) -> None:
        if self._views is not None:
            self._views.drop()
            self._views = None
            self._segment.close()


# ---------------------------------------------------------------------------------------------------- bridges


class ShmSink:
    """Publishes frames in segment `name` (created at the first frame's size, re-created when the size changes)."""

    def __init__(self, name: str, channels: int = 3) -> None:
        if channels not in (3, 4):
            raise DreamwireError(f"shm: channels={channels} is invalid: use 3 (RGB) or 4 (RGBA)")
        self.segment, self.channels = check_name(name), channels
        self._writer: ShmWriter | None = None

    @property
    def name(self) -> str:
        return f"shm:{self.segment}"

    def open(self) -> None:
        self.close()

    def write(self, frame: Frame) -> None:
        height, width = frame.image.shape[:2]
        if self._writer is not None and self._writer.shape[:2] != (height, width):
            log.info("shm %s: frames are now %dx%d; re-creating the segment", self.segment, width, height)
            self.close()
        if self._writer is None:
            self._writer = ShmWriter(self.segment, width, height, self.channels)
            log.info("shm %s: writing %dx%dx%d frames", self.segment, width, height, self.channels)
        self._writer.write(frame.image)

    def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()


class ShmSource:
    """Reads the newest frame of segment `name`; no new frame for `timeout` seconds counts as losing the writer."""

    def __init__(self, name: str, timeout: float = 2.0) -> None:
        self.segment, self.timeout = check_name(name), timeout
        self._reader: ShmReader | None = None
        self._seen: tuple[int, int] = (0, 0)  # (segment id, frame number) last delivered: kept across re-opens
        self._index = 0

    @property
    def name(self) -> str:
        return f"shm:{self.segment}"

    def open(self) -> None:
        self.close()
        self._reader = ShmReader(self.segment)

    def read(self) -> Frame:
        reader = self._reader
        if reader is None:
            raise DreamwireError(f"shm source {self.segment}: read() before open()")
        after = self._seen[1] if self._seen[0] == reader.segment_id else 0
        deadline = time.perf_counter() + self.timeout
        while (got := reader.read_new(after)) is None:
            if time.perf_counter() > deadline:
                raise DreamwireError(f"shm: no new frame in {self.segment!r} for {self.timeout:g} s (writer gone?)")
            time.sleep(POLL_S)
        n, image = got
        self._seen = (reader.segment_id, n)
        frame = Frame(rgba_to_rgb(image) if image.shape[2] == 4 else image, self._index, time.perf_counter())
        self._index += 1
        return frame

    def close(self) -> None:
        if self._reader is not None:
            reader, self._reader = self._reader, None
            reader.close()


def source_from_uri(u: ParsedUri, default_name: str) -> ShmSource:
    u.take({"timeout": TIMEOUT_HELP})
    return ShmSource(u.path or default_name, timeout=u.timeout())


def sink_from_uri(u: ParsedUri, default_name: str) -> ShmSink:
    u.take({"channels": "3 (RGB, default) or 4 (RGBA)"})
    return ShmSink(u.path or default_name, channels=u.integer("channels", 3, 3, 4))
