"""Clip I/O: .npy / PNG folder / .mp4 roundtrips, validation errors that name the file, atomic .npy."""

from __future__ import annotations

import numpy as np
import pytest

from bridges.clip_io import ClipWriter, clip_length, iter_clip
from bridges.pattern import pattern_image
from engine.core.errors import DreamwireError


def _clip(n: int = 6, width: int = 64, height: int = 48) -> list[np.ndarray]:
    return [pattern_image(i, width, height) for i in range(n)]


def test_npy_roundtrip_uint8_in_float32_out(tmp_path):
    frames = _clip()
    path = tmp_path / "out.npy"
    with ClipWriter(path) as writer:
        for f in frames:
            writer.write(f)
        assert not path.exists()  # written under a temp name until close
    stored = np.load(path)
    assert stored.dtype == np.float32 and stored.shape == (6, 48, 64, 3)
    np.testing.assert_allclose(stored, np.stack(frames) / 255.0, atol=1e-6)
    assert clip_length(path) == 6
    back = list(iter_clip(path))
    assert all(b.dtype == np.uint8 and np.array_equal(b, f) for b, f in zip(back, frames, strict=True))


def test_npy_float_input_and_float64_reading(tmp_path):
    path = tmp_path / "f.npy"
    np.save(path, np.full((2, 4, 4, 3), 0.5, dtype=np.float64))
    back = list(iter_clip(path))
    assert len(back) == 2 and back[0].dtype == np.uint8 and int(back[0][0, 0, 0]) == 128
    out = tmp_path / "g.npy"
    with ClipWriter(out) as writer:
        writer.write(np.full((4, 4, 3), 0.25, dtype=np.float32))
    assert np.load(out)[0, 0, 0, 0] == pytest.approx(0.25)


def test_npy_is_discarded_when_writing_fails(tmp_path):
    path = tmp_path / "broken.npy"
    with pytest.raises(RuntimeError), ClipWriter(path) as writer:
        writer.write(_clip(1)[0])
        raise RuntimeError("render crashed")
    assert list(tmp_path.iterdir()) == []


def test_png_folder_roundtrip(tmp_path):
    frames = _clip(4)
    folder = tmp_path / "frames"
    with ClipWriter(folder) as writer:
        for f in frames:
            writer.write(f)
    assert sorted(p.name for p in folder.iterdir())[:2] == ["frame_000000.png", "frame_000001.png"]
    assert clip_length(folder) == 4
    back = list(iter_clip(folder))
    assert all(np.array_equal(b, f) for b, f in zip(back, frames, strict=True))


def test_mp4_roundtrip_is_close_and_keeps_the_count(tmp_path):
    frames = _clip(10, 128, 96)
    path = tmp_path / "clip.mp4"
    with ClipWriter(path, fps=24) as writer:
        for f in frames:
            writer.write(f)
    back = list(iter_clip(path))
    assert len(back) == 10
    assert back[0].shape == (96, 128, 3)
    error = np.mean([np.abs(b.astype(np.int16) - f).mean() for b, f in zip(back, frames, strict=True)])
    assert error < 12.0  # lossy yuv420p; a wrong colour conversion or frame order is far above this


def test_odd_size_video_is_padded_to_even(tmp_path, caplog):
    path = tmp_path / "odd.mp4"
    with ClipWriter(path) as writer:
        writer.write(pattern_image(0, 33, 21))
    assert "odd" in caplog.text
    assert next(iter_clip(path)).shape == (22, 34, 3)


@pytest.mark.parametrize(
    ("array", "needle"),
    [
        (np.zeros((2, 4, 4), np.uint8), "shape"),
        (np.zeros((2, 4, 4, 4), np.uint8), "shape"),
        (np.zeros((2, 4, 4, 3), np.int32), "dtype"),
        (np.full((2, 4, 4, 3), 1.5, np.float32), "[0, 1]"),
        (np.full((2, 4, 4, 3), np.nan, np.float32), "[0, 1]"),
    ],
)
def test_bad_npy_is_a_one_line_error_naming_the_file(tmp_path, array, needle):
    path = tmp_path / "bad_clip.npy"
    np.save(path, array)
    with pytest.raises(DreamwireError) as info:
        iter_clip(path)  # raises at once, not at the first frame
    assert "bad_clip.npy" in str(info.value) and needle in str(info.value) and "\n" not in str(info.value)


def test_empty_or_missing_folder_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DreamwireError, match=r"empty.*no PNG/JPEG"):
        iter_clip(tmp_path / "empty")
    with pytest.raises(DreamwireError, match="missing"):
        iter_clip(tmp_path / "missing")


def test_writer_rejects_a_size_change(tmp_path):
    with ClipWriter(tmp_path / "x.npy") as writer:
        writer.write(pattern_image(0, 16, 16))
        with pytest.raises(DreamwireError, match="16x16"):
            writer.write(pattern_image(0, 32, 16))


def test_file_source_loops_and_keeps_counting(tmp_path):
    from bridges.file import FileSource

    path = tmp_path / "three.npy"
    with ClipWriter(path) as writer:
        for i in range(3):
            writer.write(pattern_image(i, 16, 16))
    looping = FileSource(path, loop=True)
    looping.open()
    frames = [looping.read() for _ in range(7)]
    looping.close()
    assert [f.index for f in frames] == list(range(7))
    assert np.array_equal(frames[4].image, pattern_image(1, 16, 16))  # second pass, second frame
    once = FileSource(path)
    once.open()
    assert [once.read() is None for _ in range(4)] == [False, False, False, True]
    once.close()
