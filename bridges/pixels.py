"""Pixel conversion between the engine's frame format and what VJ tools send and expect.

The engine's format (engine.core.frames.Frame): (H, W, 3) uint8 RGB, rows top to bottom, C-contiguous.
Everything here is a pure function of its arguments except FrameConformer, which adds log-once bookkeeping
around to_rgb8 + fit for the source boundary (engine/live/io_threads.py).

Layouts: RGB (H, W, 3), RGBA / BGRA (H, W, 4), UYVY (H, 2W): 4:2:2 YCbCr, bytes U0 Y0 V0 Y1 per pixel pair,
limited range (Y 16..235, Cb/Cr 16..240), BT.709 by default: the NDI runtime bundled with cyndilib 0.1.3 decodes
UYVY as BT.709 at every size (measured: BT.601 colours come back up to 23/255 off, BT.709 ones within the codec's
error, at 64x64, 720x576 and 1280x720).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal, get_args

import numpy as np
from PIL import Image

from engine.core.errors import DreamwireError

log = logging.getLogger(__name__)

Fit = Literal["stretch", "letterbox", "crop"]
FITS: tuple[str, ...] = get_args(Fit)

# (Kr, Kb) luma weights of the two YCbCr matrices.
_LUMA = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}


class UnconvertibleFrame(DreamwireError):
    """A frame that no conversion turns into (H, W, 3) uint8 RGB; the message says what it was."""


def describe(image: object) -> str:
    """'float64 (480, 640, 4)': dtype and shape, for log lines and errors."""
    if isinstance(image, np.ndarray):
        return f"{image.dtype} {tuple(image.shape)}"
    return type(image).__name__


# ---------------------------------------------------------------------------------------------------- dtype


def to_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 as is; float in [0, 1] (clipped, NaN → 0) scaled and rounded; uint16 scaled by 255/65535; bool 0/255."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.bool_:
        return image.astype(np.uint8) * np.uint8(255)
    if image.dtype == np.uint16:
        return ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        unit = np.nan_to_num(image.astype(np.float32, copy=False), nan=0.0, posinf=1.0, neginf=0.0)
        return (np.clip(unit, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    raise UnconvertibleFrame(f"dtype {image.dtype} is not uint8, uint16, bool or float in [0, 1]")


# ---------------------------------------------------------------------------------------------------- channels


def to_rgb8(image: object) -> np.ndarray:
    """Any frame a source may hand over → (H, W, 3) uint8 RGB, C-contiguous (the same array when it already is).

    Accepted: (H, W) grey, (H, W, 1) grey, (H, W, 3) RGB, (H, W, 4) RGBA (alpha dropped), in any dtype to_uint8
    takes. Raises UnconvertibleFrame naming what arrived otherwise.
    """
    if not isinstance(image, np.ndarray):
        raise UnconvertibleFrame(f"a {type(image).__name__} is not an image array")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or image.shape[0] == 0 or image.shape[1] == 0:
        raise UnconvertibleFrame(f"shape {tuple(image.shape)} is not (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
    image = to_uint8(image)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    return np.ascontiguousarray(image)


def rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) RGBA or RGBX → (H, W, 3) RGB (a copy; alpha dropped)."""
    return np.ascontiguousarray(rgba[:, :, :3])


def bgra_to_rgb(bgra: np.ndarray) -> np.ndarray:
    """(H, W, 4) BGRA or BGRX → (H, W, 3) RGB."""
    return np.ascontiguousarray(bgra[:, :, 2::-1])


def bgr_to_rgb(bgr: np.ndarray) -> np.ndarray:
    """(H, W, 3) BGR (OpenCV's order) → (H, W, 3) RGB."""
    return np.ascontiguousarray(bgr[:, :, ::-1])


def rgb_to_rgba(rgb: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) RGB → (H, W, 4) RGBA with alpha 255, written into `out` when it has the right shape."""
    out = _scratch(out, rgb, 4)
    for channel in range(3):  # one channel at a time: numpy's 3-of-4 strided copy is several times slower
        out[:, :, channel] = rgb[:, :, channel]
    out[:, :, 3] = 255
    return out


def rgb_to_bgra(rgb: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) RGB → (H, W, 4) BGRA with alpha 255, written into `out` when it has the right shape."""
    out = _scratch(out, rgb, 4)
    for channel in range(3):
        out[:, :, channel] = rgb[:, :, 2 - channel]
    out[:, :, 3] = 255
    return out


def _scratch(out: np.ndarray | None, like: np.ndarray, channels: int) -> np.ndarray:
    shape = (like.shape[0], like.shape[1], channels)
    if out is None or out.shape != shape or out.dtype != np.uint8:
        return np.empty(shape, np.uint8)
    return out


def flip_vertical(image: np.ndarray) -> np.ndarray:
    """Rows in the other order (bottom-up ↔ top-down), as a view."""
    return image[::-1]


# ---------------------------------------------------------------------------------------------------- UYVY


def _chroma_matrices(matrix: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(luma row, [Pb; Pr] rows, RGB-from-[Pb, Pr] matrix) for unit-range RGB, from the matrix's (Kr, Kb)."""
    kr, kb = _LUMA[matrix]
    kg = 1.0 - kr - kb
    luma = np.array([kr, kg, kb], np.float32)
    to_pb_pr = np.array([[-kr, -kg, 1.0 - kb], [1.0 - kr, -kg, -kb]], np.float32)
    to_pb_pr /= np.array([[2.0 * (1.0 - kb)], [2.0 * (1.0 - kr)]], np.float32)
    from_pb_pr = np.array(
        [[0.0, -2.0 * kb * (1.0 - kb) / kg, 2.0 * (1.0 - kb)], [2.0 * (1.0 - kr), -2.0 * kr * (1.0 - kr) / kg, 0.0]],
        np.float32,
    )  # rows: Pb, Pr; columns: R, G, B
    return luma, to_pb_pr, from_pb_pr


def uyvy_to_rgb(uyvy: np.ndarray, width: int, height: int, matrix: str = "bt709") -> np.ndarray:
    """UYVY 4:2:2 (height rows of 2·width bytes; a flat buffer is fine) → (H, W, 3) uint8 RGB."""
    if width % 2:
        raise UnconvertibleFrame(f"UYVY width {width} is odd: 4:2:2 needs pixel pairs")
    _, _, from_pb_pr = _chroma_matrices(matrix)
    pairs = np.asarray(uyvy, np.uint8).reshape(height, width // 2, 4).astype(np.float32)  # U Y0 V Y1
    luma = (pairs[:, :, 1::2] - 16.0) * np.float32(255.0 / 219.0)  # (H, W/2, 2) in 0..255
    chroma = (pairs[:, :, 0::2] - 128.0) * np.float32(255.0 / 224.0)  # (H, W/2, 2): Pb, Pr in -127.5..127.5
    rgb = luma[:, :, :, None] + (chroma @ from_pb_pr)[:, :, None, :]  # (H, W/2, 2, 3): both pixels of a pair
    return (np.clip(rgb, 0.0, 255.0) + 0.5).astype(np.uint8).reshape(height, width, 3)


def rgb_to_uyvy(rgb: np.ndarray, matrix: str = "bt709") -> np.ndarray:
    """(H, W, 3) uint8 RGB (W even) → (H, 2W) uint8 UYVY; chroma is the mean of each horizontal pixel pair."""
    height, width = rgb.shape[:2]
    if width % 2:
        raise UnconvertibleFrame(f"UYVY width {width} is odd: 4:2:2 needs pixel pairs")
    luma_row, to_pb_pr, _ = _chroma_matrices(matrix)
    unit = rgb.astype(np.float32)  # 0..255
    out = np.empty((height, width // 2, 4), np.uint8)
    luma = unit @ (luma_row * np.float32(219.0 / 255.0)) + np.float32(16.5)  # (H, W), limited range, rounded
    out[:, :, 1], out[:, :, 3] = luma[:, 0::2], luma[:, 1::2]
    pair = unit[:, 0::2] + unit[:, 1::2]  # (H, W/2, 3): twice the pair's mean
    chroma = pair @ (to_pb_pr.T * np.float32(224.0 / 255.0 / 2.0)) + np.float32(128.5)  # (H, W/2, 2)
    out[:, :, 0], out[:, :, 2] = chroma[:, :, 0], chroma[:, :, 1]
    return out.reshape(height, 2 * width)


# ---------------------------------------------------------------------------------------------------- size


def fit(image: np.ndarray, height: int, width: int, mode: Fit = "stretch") -> np.ndarray:
    """(h, w, 3) uint8 → (height, width, 3) uint8: stretch to the size, letterbox (scale to fit, black bars) or crop
    (scale to cover, centre cut). Bilinear and antialiased (PIL); the same array when the size already matches."""
    if mode not in FITS:
        raise DreamwireError(f"fit {mode!r} is unknown (allowed: {', '.join(FITS)})")
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    if mode == "stretch":
        return _resize(image, height, width)
    if mode == "crop":
        scale = max(height / h, width / w)
        keep_h, keep_w = min(h, round(height / scale)), min(w, round(width / scale))  # source pixels kept
        top, left = (h - keep_h) // 2, (w - keep_w) // 2
        return _resize(image[top : top + keep_h, left : left + keep_w], height, width)
    scale = min(height / h, width / w)
    inner_h, inner_w = max(1, min(height, round(h * scale))), max(1, min(width, round(w * scale)))
    out = np.zeros((height, width, 3), np.uint8)
    top, left = (height - inner_h) // 2, (width - inner_w) // 2
    out[top : top + inner_h, left : left + inner_w] = _resize(image, inner_h, inner_w)
    return out


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    if image.shape[:2] == (height, width):
        return np.ascontiguousarray(image)
    resized = Image.fromarray(np.ascontiguousarray(image)).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized)


# ---------------------------------------------------------------------------------------------------- boundary


class FrameConformer:
    """The check at a bridge boundary: any frame → (H, W, 3) uint8 RGB (at the engine's size when `size` is given),
    or None for a frame that cannot be converted.

    A streak of unconvertible frames is one warning (and one line when frames convert again), never one per frame;
    a new input size is one line too. size: called per frame, returns (height, width) or None for "keep the size".
    """

    def __init__(
        self, what: str, size: Callable[[], tuple[int, int] | None] | None = None, mode: Fit = "stretch"
    ) -> None:
        if mode not in FITS:
            raise DreamwireError(f"{what}: fit {mode!r} is unknown (allowed: {', '.join(FITS)})")
        self.what, self.size, self.mode = what, size, mode
        self.rejected = 0  # frames dropped because they could not be converted
        self._streak = 0
        self._logged_sizes: tuple[tuple[int, int], tuple[int, int]] | None = None

    def __call__(self, image: object) -> np.ndarray | None:
        try:
            rgb = to_rgb8(image)
        except UnconvertibleFrame as error:
            self.rejected += 1
            if not self._streak:
                log.warning(
                    "%s: dropping frames that cannot be converted to RGB: %s (%s)", self.what, error, describe(image)
                )
            self._streak += 1
            return None
        if self._streak:
            log.info("%s: frames convert again after %d dropped", self.what, self._streak)
            self._streak = 0
        target = self.size() if self.size is not None else None
        if target is None or rgb.shape[:2] == target:
            return rgb
        sizes = (rgb.shape[:2], target)
        if sizes != self._logged_sizes:
            self._logged_sizes = sizes
            log.info(
                "%s: frames are %dx%d; fitting to %dx%d (%s)",
                self.what,
                rgb.shape[1],
                rgb.shape[0],
                target[1],
                target[0],
                self.mode,
            )
        return fit(rgb, target[0], target[1], self.mode)
