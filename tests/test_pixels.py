"""Pixel conversion (bridges/pixels.py): dtypes, channel orders, UYVY, flips and fitting to the engine's size."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from bridges import pixels
from bridges.pixels import FrameConformer, UnconvertibleFrame

RNG = np.random.default_rng(7)
RGB = RNG.integers(0, 256, (6, 8, 3), dtype=np.uint8)


def test_float_to_uint8_rounds_clips_and_zeroes_nan():
    image = np.array([[[0.0, 0.5, 1.0], [-0.2, 1.7, np.nan]]], np.float64)
    assert pixels.to_uint8(image).tolist() == [[[0, 128, 255], [0, 255, 0]]]
    assert pixels.to_uint8(image.astype(np.float32)).dtype == np.uint8


def test_uint16_and_bool_scale_to_uint8():
    assert pixels.to_uint8(np.array([0, 257, 65535], np.uint16)).tolist() == [0, 1, 255]
    assert pixels.to_uint8(np.array([False, True])).tolist() == [0, 255]


@pytest.mark.parametrize("dtype", [np.int64, np.complex64, object])
def test_other_dtypes_are_refused_by_name(dtype):
    with pytest.raises(UnconvertibleFrame, match=str(np.dtype(dtype))):
        pixels.to_uint8(np.zeros((2, 2, 3), dtype))


def test_to_rgb8_converts_grey_rgba_and_float_and_keeps_rgb_as_is():
    assert pixels.to_rgb8(RGB) is RGB
    rgba = np.concatenate([RGB, np.full((6, 8, 1), 9, np.uint8)], axis=2)
    np.testing.assert_array_equal(pixels.to_rgb8(rgba), RGB)
    np.testing.assert_array_equal(pixels.to_rgb8(RGB / 255.0), RGB)
    grey = RGB[:, :, 0]
    np.testing.assert_array_equal(pixels.to_rgb8(grey), np.stack([grey] * 3, axis=2))
    np.testing.assert_array_equal(pixels.to_rgb8(grey[:, :, None]), np.stack([grey] * 3, axis=2))
    assert pixels.to_rgb8(RGB[:, ::2]).flags.c_contiguous


@pytest.mark.parametrize(
    ("image", "needle"),
    [
        (np.zeros((4, 4, 2), np.uint8), "shape (4, 4, 2)"),
        (np.zeros((2, 4, 4, 3), np.uint8), "shape (2, 4, 4, 3)"),
        (np.zeros((0, 4, 3), np.uint8), "shape (0, 4, 3)"),
        ([[1, 2]], "a list is not an image array"),
        (None, "a NoneType is not an image array"),
    ],
)
def test_to_rgb8_refuses_what_is_not_an_image(image, needle):
    with pytest.raises(UnconvertibleFrame) as info:
        pixels.to_rgb8(image)
    assert needle in str(info.value)


def test_rgba_and_bgra_round_trips():
    np.testing.assert_array_equal(pixels.rgba_to_rgb(pixels.rgb_to_rgba(RGB)), RGB)
    np.testing.assert_array_equal(pixels.bgra_to_rgb(pixels.rgb_to_bgra(RGB)), RGB)
    bgra = pixels.rgb_to_bgra(RGB)
    assert bgra[0, 0].tolist() == [*RGB[0, 0, ::-1].tolist(), 255]
    np.testing.assert_array_equal(pixels.bgr_to_rgb(RGB[:, :, ::-1]), RGB)


def test_rgb_to_rgba_reuses_a_matching_buffer_only():
    out = np.zeros((6, 8, 4), np.uint8)
    assert pixels.rgb_to_rgba(RGB, out=out) is out
    assert pixels.rgb_to_rgba(RGB, out=np.zeros((2, 2, 4), np.uint8)).shape == (6, 8, 4)


def test_flip_vertical_reverses_rows():
    flipped = pixels.flip_vertical(RGB)
    np.testing.assert_array_equal(flipped[0], RGB[-1])
    np.testing.assert_array_equal(pixels.flip_vertical(flipped), RGB)


def test_uyvy_layout_of_grey_and_primaries():
    grey = np.full((2, 4, 3), 128, np.uint8)
    uyvy = pixels.rgb_to_uyvy(grey)
    assert uyvy.shape == (2, 8)
    assert uyvy[0, :4].tolist() == [128, 126, 128, 126]  # U Y V Y: no chroma, limited-range luma 16 + 219·128/255
    white, black = np.full((2, 2, 3), 255, np.uint8), np.zeros((2, 2, 3), np.uint8)
    assert pixels.rgb_to_uyvy(white)[0].tolist() == [128, 235, 128, 235]
    assert pixels.rgb_to_uyvy(black)[0].tolist() == [128, 16, 128, 16]


@pytest.mark.parametrize("matrix", ["bt601", "bt709"])
def test_uyvy_round_trip_is_close_for_flat_colours(matrix):
    flat = np.zeros((4, 8, 3), np.uint8)
    flat[:, :4] = (200, 30, 40)
    flat[:, 4:] = (20, 180, 230)
    back = pixels.uyvy_to_rgb(pixels.rgb_to_uyvy(flat, matrix).ravel(), 8, 4, matrix)
    assert np.abs(back.astype(int) - flat).max() <= 2
    other = "bt709" if matrix == "bt601" else "bt601"
    assert np.abs(pixels.uyvy_to_rgb(pixels.rgb_to_uyvy(flat, matrix), 8, 4, other).astype(int) - flat).max() > 5


def test_uyvy_needs_an_even_width():
    with pytest.raises(UnconvertibleFrame, match="width 3 is odd"):
        pixels.rgb_to_uyvy(np.zeros((2, 3, 3), np.uint8))


def _solid(height, width, colour):
    return np.full((height, width, 3), colour, np.uint8)


def test_fit_stretch_resizes_and_keeps_a_matching_frame():
    assert pixels.fit(RGB, 6, 8) is RGB
    out = pixels.fit(_solid(30, 40, 90), 16, 16, "stretch")
    assert out.shape == (16, 16, 3) and (out == 90).all()


def test_fit_letterbox_keeps_the_aspect_with_black_bars():
    wide = _solid(20, 40, 200)  # 2:1 into a square: bars above and below
    out = pixels.fit(wide, 40, 40, "letterbox")
    assert out.shape == (40, 40, 3)
    assert (out[:10] == 0).all() and (out[30:] == 0).all() and (out[10:30] == 200).all()


def test_fit_crop_cuts_the_centre():
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, 10:30] = 250  # the centre square is bright, the sides dark
    out = pixels.fit(wide, 20, 20, "crop")
    assert out.shape == (20, 20, 3) and (out == 250).all()


def test_fit_refuses_an_unknown_mode():
    with pytest.raises(pixels.DreamwireError, match="fit 'zoom' is unknown"):
        pixels.fit(RGB, 4, 4, "zoom")  # type: ignore[arg-type]


def test_conformer_converts_fits_and_logs_one_line_per_streak(caplog):
    conform = FrameConformer("source test", size=lambda: (4, 4), mode="stretch")
    with caplog.at_level(logging.INFO, logger="bridges.pixels"):
        assert conform(np.zeros((8, 8, 4), np.float64)).shape == (4, 4, 3)
        for _ in range(5):
            assert conform(np.zeros((8, 8, 2), np.uint8)) is None
        assert conform(np.zeros((4, 4, 3), np.uint8)).shape == (4, 4, 3)
        assert conform("not an image") is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "source test: dropping frames that cannot be converted to RGB: shape (8, 8, 2) is not (H, W), (H, W, 1), "
        "(H, W, 3) or (H, W, 4) (uint8 (8, 8, 2))",
        "source test: dropping frames that cannot be converted to RGB: a str is not an image array (str)",
    ]
    assert "source test: frames convert again after 5 dropped" in caplog.text
    assert caplog.text.count("fitting to 4x4") == 1
    assert conform.rejected == 6
