"""Offline clip I/O for `dreamwire render` and the file: bridge.

A clip is one of (decided by suffix):
- .npy: (N, H, W, 3) uint8, or float32/float64 in [0, 1];
- a video (.mp4 .mov .mkv .avi .webm), via PyAV;
- anything else: a folder of PNG/JPEG images, sorted by file name.

Readers yield (H, W, 3) uint8 RGB frames (the engine.core.frames.Frame format). Writers take uint8 or float [0, 1]
frames and write .npy as (N, H, W, 3) float32 in [0, 1], PNG folders as frame_000000.png..., videos as yuv420p.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import tempfile
from collections.abc import Generator
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np
from PIL import Image

from engine.core.errors import DreamwireError

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".avi", ".webm"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
_NPY_DTYPES = (np.uint8, np.float32, np.float64)
_NPY_MAGIC = b"\x93NUMPY"


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return "npy"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    return "folder"


# ---------------------------------------------------------------------------------------------------- reading


def iter_clip(path: str | os.PathLike[str]) -> Generator[np.ndarray, None, None]:
    """Frames of the clip at `path`, each (H, W, 3) uint8 RGB.

    The clip is opened and validated now (errors raise here, not at the first next()); frames are read lazily.
    Call .close() on the result to release a video file early.
    """
    p = Path(path)
    kind = _kind(p)
    if kind == "npy":
        return _iter_npy(_load_npy(p))
    if kind == "video":
        return _iter_video(p, _open_video(p))
    return _iter_images(_image_files(p))


def clip_length(path: str | os.PathLike[str]) -> int | None:
    """Number of frames in the clip, or None when a video container does not say."""
    p = Path(path)
    kind = _kind(p)
    if kind == "npy":
        return int(_load_npy(p).shape[0])
    if kind == "folder":
        return len(_image_files(p))
    container = _open_video(p)
    try:
        frames = container.streams.video[0].frames
        return int(frames) if frames > 0 else None
    finally:
        container.close()


def _reason(error: BaseException) -> str:
    """The OS's words for an I/O error ("No space left on device"), without the errno and path prefix."""
    return (error.strerror if isinstance(error, OSError) else None) or str(error) or type(error).__name__


def _require_file(path: Path) -> None:
    if path.is_dir():
        raise DreamwireError(f"clip {path}: is a folder, not a file")
    if not path.is_file():
        raise DreamwireError(f"clip {path}: file not found")


def _load_npy(path: Path) -> np.ndarray:
    """Memory-mapped (N, H, W, 3) array, validated; float ranges are checked over the whole file once."""
    _require_file(path)
    try:
        with open(path, "rb") as file:
            magic = file.read(len(_NPY_MAGIC))
        if magic != _NPY_MAGIC:  # else np.load takes it for a pickle and says so, which misleads
            raise DreamwireError(f"clip {path}: {'empty file' if not magic else 'not an .npy file (no NUMPY header)'}")
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:  # EOFError/ValueError: a truncated header or data
        raise DreamwireError(f"clip {path}: not a readable .npy file ({_reason(e)})") from e
    if array.ndim != 4 or array.shape[-1] != 3:
        raise DreamwireError(f"clip {path}: shape {tuple(array.shape)} is not (N, H, W, 3) RGB")
    if array.dtype not in _NPY_DTYPES:
        raise DreamwireError(f"clip {path}: dtype {array.dtype} is not uint8, float32 or float64")
    if array.dtype != np.uint8 and array.size:
        low, high = float(np.min(array)), float(np.max(array))
        if not (0.0 <= low and high <= 1.0):  # also rejects NaN, whose comparisons are False
            raise DreamwireError(f"clip {path}: float values span [{low:g}, {high:g}], expected [0, 1]")
    return array


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _iter_npy(array: np.ndarray) -> Generator[np.ndarray, None, None]:
    for image in array:
        yield _to_uint8(image)


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        kinds = " ".join(sorted(VIDEO_SUFFIXES))
        what = "is a file, not a folder" if folder.exists() else "no such folder"
        raise DreamwireError(f"clip {folder}: {what} (and not a .npy or a video file: {kinds})")
    try:
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    except OSError as e:
        raise DreamwireError(f"clip {folder}: folder cannot be read ({_reason(e)})") from e
    if not files:
        raise DreamwireError(f"clip {folder}: folder has no PNG/JPEG images")
    return files


def _read_image(file: Path) -> np.ndarray:
    try:
        with Image.open(file) as img:
            return np.asarray(img.convert("RGB"))
    except OSError as e:
        raise DreamwireError(f"clip image {file}: cannot be read ({_reason(e)})") from e


def _iter_images(files: list[Path]) -> Generator[np.ndarray, None, None]:
    """The first image is decoded now (a folder of junk fails before any work), the rest as they are asked for."""
    first = _read_image(files[0])
    return _iter_more_images(first, files[1:])


def _iter_more_images(first: np.ndarray, files: list[Path]) -> Generator[np.ndarray, None, None]:
    size = first.shape[:2]
    yield first
    for file in files:
        image = _read_image(file)
        if image.shape[:2] != size:
            raise DreamwireError(
                f"clip image {file}: size {image.shape[1]}x{image.shape[0]} differs from the first "
                f"image's {size[1]}x{size[0]}"
            )
        yield image


def _open_video(path: Path) -> Any:
    import av  # lazy: PyAV loads FFmpeg's shared libraries

    _require_file(path)
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as e:
        raise DreamwireError(f"clip {path}: cannot be opened as video ({e})") from e
    if not container.streams.video:
        container.close()
        raise DreamwireError(f"clip {path}: has no video stream")
    return container


def _iter_video(path: Path, container: Any) -> Generator[np.ndarray, None, None]:
    import av

    try:
        for frame in container.decode(container.streams.video[0]):
            yield frame.to_ndarray(format="rgb24")
    except (av.FFmpegError, OSError) as e:
        raise DreamwireError(f"clip {path}: decoding failed ({e})") from e
    finally:
        container.close()


# ---------------------------------------------------------------------------------------------------- writing


class ClipWriter:
    """Writes frames to .npy / a video / a PNG folder (by suffix of `path`); use as a context manager or close().

    The location is checked when the writer is made (folders created, a probe file written and removed), so a
    path that can't be written fails before any frame is computed. Every I/O failure is a one-line
    DreamwireError naming the path and the OS's reason.
    A .npy is streamed to `<name>.npy.part` and renamed on close, so a crash never leaves a half-written .npy.
    Videos need even sizes (yuv420p): odd frames are padded by one edge row/column, with one warning.
    """

    def __init__(self, path: str | os.PathLike[str], fps: float = 30.0) -> None:
        if not (fps > 0 and np.isfinite(fps)):
            raise DreamwireError(f"clip writer fps={fps} is invalid: use a rate > 0")
        self.path = Path(path)
        self.fps = fps
        self.count = 0
        self._kind = _kind(self.path)
        self._shape: tuple[int, int] | None = None  # (H, W) of the first frame
        self._npy: _NpyStream | None = None
        self._video: _VideoStream | None = None
        self._closed = False
        self._created: Path | None = None  # the outermost folder this writer created (removed again if unused)
        self._check_location()

    def _check_location(self) -> None:
        """Fail now, one line, when the output can't be written: nothing is computed and then lost."""
        if self._kind == "folder":
            if self.path.exists() and not self.path.is_dir():
                raise DreamwireError(f"clip {self.path}: is a file, not a folder (a .npy or video name writes a file)")
            folder = self.path
        else:
            if self.path.is_dir():
                raise DreamwireError(f"clip {self.path}: is a folder, not a file")
            folder = self.path.parent
        missing = [p for p in (folder, *folder.parents) if not p.exists()]
        blocker = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise DreamwireError(f"clip {self.path}: {blocker} is not a folder, so none can be made in it")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DreamwireError(f"clip {self.path}: cannot create the folder {folder} ({_reason(e)})") from e
        self._created = missing[-1] if missing else None
        try:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".dreamwire-probe-"):
                pass
        except OSError as e:
            self._remove_created_folders()
            raise DreamwireError(f"clip {self.path}: cannot write in {folder} ({_reason(e)})") from e

    def _remove_created_folders(self) -> None:
        """Undo the folders made by _check_location when nothing was written into them."""
        if self._created is None:
            return
        folder = self.path if self._kind == "folder" else self.path.parent
        for path in (folder, *folder.parents):
            try:
                path.rmdir()  # only an empty folder
            except OSError:
                return
            if path == self._created:
                return

    def write(self, image: np.ndarray) -> None:
        """image: (H, W, 3) uint8, or float32/float64 in [0, 1] (clipped); every frame must have the same size."""
        if self._closed:
            raise DreamwireError(f"clip {self.path}: write after close")
        if image.ndim != 3 or image.shape[2] != 3:
            raise DreamwireError(f"clip {self.path}: frame shape {tuple(image.shape)} is not (H, W, 3)")
        if image.dtype not in _NPY_DTYPES:
            raise DreamwireError(f"clip {self.path}: frame dtype {image.dtype} is not uint8, float32 or float64")
        hw = (int(image.shape[0]), int(image.shape[1]))
        if self._shape is None:
            self._shape = hw
        elif hw != self._shape:
            raise DreamwireError(
                f"clip {self.path}: frame size {hw[1]}x{hw[0]} differs from the first frame's "
                f"{self._shape[1]}x{self._shape[0]}"
            )
        try:
            if self._kind == "npy":
                if self._npy is None:
                    self._npy = _NpyStream(self.path, hw)
                frame = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else np.clip(image, 0.0, 1.0)
                self._npy.write(frame.astype(np.float32, copy=False))
            elif self._kind == "video":
                if self._video is None:
                    self._video = _VideoStream(self.path, hw, self.fps)
                self._video.write(_to_uint8(image))
            else:
                Image.fromarray(_to_uint8(image)).save(self.path / f"frame_{self.count:06d}.png")
        except OSError as e:  # a full disk, a removed drive, a quota
            raise DreamwireError(f"clip {self.path}: writing frame {self.count} failed ({_reason(e)})") from e
        self.count += 1

    def close(self) -> None:
        """Finish the file (rename the .npy into place, flush the video encoder). Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._npy is not None:
                self._npy.finish()
            if self._video is not None:
                self._video.finish()
        except OSError as e:
            if self._npy is not None:
                self._npy.discard()
            raise DreamwireError(f"clip {self.path}: finishing the file failed ({_reason(e)})") from e
        if self.count == 0 and self._kind != "folder":
            self._remove_created_folders()
            log.warning("clip %s: no frames were written, so no file was created", self.path)

    def abort(self) -> None:
        """Stop without finishing: a partial .npy is deleted; a video is still closed (playable up to here)."""
        if self._closed:
            return
        self._closed = True
        if self._npy is not None:
            self._npy.discard()
        if self._video is not None:
            try:
                self._video.finish()
            except OSError as e:  # already failing: the first error is the one that is reported
                log.warning("clip %s: closing the video after an error failed too (%s)", self.path, _reason(e))
        if self.count == 0:
            self._remove_created_folders()

    def __enter__(self) -> ClipWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class _NpyStream:
    """Streams (H, W, 3) float32 frames into an .npy whose frame count is patched into the header on finish.

    The header is padded to a fixed 128 bytes (NPY v1 allows trailing spaces), so rewriting it with the final N
    never moves the data.
    """

    _HEADER_BYTES = 128

    def __init__(self, path: Path, hw: tuple[int, int]) -> None:
        self.path = path
        self.part = path.with_name(path.name + ".part")
        self.hw = hw
        self.count = 0
        self.file: IO[bytes] = open(self.part, "wb")  # closed in finish() / discard()
        self._write_header()

    def _write_header(self) -> None:
        header = repr({"descr": "<f4", "fortran_order": False, "shape": (self.count, *self.hw, 3)})
        prefix = b"\x93NUMPY\x01\x00"
        body_len = self._HEADER_BYTES - len(prefix) - 2  # 2 bytes: little-endian header length
        body = header.encode("latin1").ljust(body_len - 1) + b"\n"
        if len(body) != body_len:
            raise DreamwireError(f"clip {self.path}: frame shape {self.hw} too large for the .npy header")
        self.file.seek(0)
        self.file.write(prefix + struct.pack("<H", body_len) + body)

    def write(self, frame: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(frame, dtype="<f4").tobytes())
        self.count += 1

    def finish(self) -> None:
        self._write_header()
        self.file.close()
        os.replace(self.part, self.path)

    def discard(self) -> None:
        """Best effort after a failure: closing can fail again (buffered bytes on a full disk)."""
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(OSError):
            self.part.unlink(missing_ok=True)


class _VideoStream:
    """yuv420p video via PyAV: libx264 when the installed FFmpeg has it, else mpeg4."""

    def __init__(self, path: Path, hw: tuple[int, int], fps: float) -> None:
        import av  # lazy: PyAV loads FFmpeg's shared libraries

        self.path = path
        height, width = hw
        self.pad = (height % 2, width % 2)  # rows, columns to add for yuv420p's 2x2 chroma
        if any(self.pad):
            log.warning(
                "clip %s: frame size %dx%d is odd; padding to %dx%d for yuv420p video",
                path,
                width,
                height,
                width + self.pad[1],
                height + self.pad[0],
            )
        self.rate = Fraction(fps).limit_denominator(1001)
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        try:
            self.container = av.open(str(path), mode="w")
            self.stream = self.container.add_stream(codec, rate=self.rate)
        except av.FFmpegError as e:
            raise DreamwireError(f"clip {path}: cannot create video ({e})") from e
        self.stream.width, self.stream.height = width + self.pad[1], height + self.pad[0]
        self.stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            self.stream.options = {"crf": "18", "preset": "veryfast"}
        else:
            self.stream.bit_rate = 20_000_000  # mpeg4's default (~200 kb/s) smears test patterns badly
        self.count = 0

    def write(self, image: np.ndarray) -> None:
        import av

        if any(self.pad):
            image = np.pad(image, ((0, self.pad[0]), (0, self.pad[1]), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = self.count  # in units of 1/rate
        frame.time_base = 1 / self.rate
        try:
            self.container.mux(self.stream.encode(frame))
        except av.FFmpegError as e:  # PyAV's I/O errors are not all OSErrors
            raise OSError(f"video encoder: {e}") from e
        self.count += 1

    def finish(self) -> None:
        import av

        try:
            self.container.mux(self.stream.encode(None))  # flush frames the encoder still holds (B-frames)
        except av.FFmpegError as e:
            raise OSError(f"video encoder: {e}") from e
        finally:
            self.container.close()
