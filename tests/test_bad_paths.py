"""Every input/output failure of `dreamwire render` is one line naming the path and the reason, exit code 2;
a bad output location fails before the model loads (nothing is computed and then lost), and a write that
fails half way leaves no partial file behind.

Tests run as root, where chmod does not stop a write: read-only and missing locations come from /proc and
/sys, "full" from /dev/full and from a file-size limit, "unreadable" from /proc/self/mem (EIO on read).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import clip

from engine.commands.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--preset", "offline-demo", "--set", "stream.width=64", "--set", "stream.height=64"]
LOADED = "loaded model"  # engine.pipeline.models logs this once the model is built


def _npy(path: Path, array: np.ndarray | None = None) -> Path:
    np.save(path, clip(3) if array is None else array)
    return path


def _file(path: Path, data: bytes = b"not a clip\n") -> Path:
    path.write_bytes(data)
    return path


def _truncated(path: Path, keep: int) -> Path:
    return _file(path, _npy(path).read_bytes()[:keep])


def _png_folder_with_a_broken_image(folder: Path) -> Path:
    folder.mkdir()
    (folder / "000.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


def _symlink(path: Path, target: str) -> Path:
    path.symlink_to(target)
    return path


def _dir(path: Path) -> Path:
    path.mkdir()
    return path


# name: (make the input in tmp, the text the one error line must hold)
BAD_INPUTS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing": (lambda t: t / "none.npy", "input not found"),
    "empty .npy": (lambda t: _file(t / "empty.npy", b""), "empty file"),
    "truncated .npy data": (lambda t: _truncated(t / "cut.npy", 500), "not a readable .npy file"),
    "truncated .npy header": (lambda t: _truncated(t / "cut.npy", 20), "not a readable .npy file"),
    "not an .npy": (lambda t: _file(t / "text.npy"), "no NUMPY header"),
    "wrong shape": (lambda t: _npy(t / "gray.npy", np.zeros((2, 8, 8), np.uint8)), "is not (N, H, W, 3)"),
    "wrong dtype": (lambda t: _npy(t / "ints.npy", np.zeros((2, 8, 8, 3), np.int32)), "dtype int32"),
    "float out of range": (lambda t: _npy(t / "hot.npy", np.full((2, 8, 8, 3), 2.0, np.float32)), "[0, 1]"),
    "folder named .npy": (lambda t: _dir(t / "clip.npy"), "is a folder, not a file"),
    "folder named .mp4": (lambda t: _dir(t / "clip.mp4"), "is a folder, not a file"),
    "file where a folder is expected": (lambda t: _file(t / "frames"), "is a file, not a folder"),
    "empty folder": (lambda t: _dir(t / "frames"), "no PNG/JPEG"),
    "broken PNG": (lambda t: _png_folder_with_a_broken_image(t / "frames"), "000.png: cannot be read"),
    "not a video": (lambda t: _file(t / "clip.mp4"), "cannot be opened as video"),
    "unreadable (EIO)": (lambda t: _symlink(t / "mem.npy", "/proc/self/mem"), "Input/output error"),
}


# name: (the output path, given tmp; the text the one error line must hold)
BAD_OUTPUTS: dict[str, tuple[Callable[[Path], str], str]] = {
    "folder that can't be created (/proc)": (lambda t: "/proc/nope/o.npy", "cannot create the folder /proc/nope"),
    "folder that can't be created (/sys)": (lambda t: "/sys/nope/o.npy", "cannot create the folder /sys/nope"),
    "read-only location (/sys)": (lambda t: "/sys/o.npy", "cannot write in /sys"),
    "location that takes no files (/proc)": (lambda t: "/proc/self/o.npy", "cannot write in /proc/self"),
    "under a regular file": (lambda t: str(_file(t / "notes.txt") / "o.npy"), "notes.txt is not a folder"),
    "under a device (/dev/full)": (lambda t: "/dev/full/o.npy", "/dev/full is not a folder"),
    "folder where a file is expected": (lambda t: str(_dir(t / "out.npy")), "is a folder, not a file"),
    "folder where a video is expected": (lambda t: str(_dir(t / "out.mp4")), "is a folder, not a file"),
    "file where a folder is expected": (lambda t: str(_file(t / "frames")), "is a file, not a folder"),
    "the input itself": (lambda t: str(t / "in.npy"), "is the --input"),
}


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_naming_the_path(tmp_path, caplog, case):
    make, reason = BAD_INPUTS[case]
    path = make(tmp_path)
    with caplog.at_level(logging.INFO):
        code = main(["render", *SMALL, "--input", str(path), "--output", str(tmp_path / "out.npy")])
    errors = _errors(caplog)
    assert code == 2 and len(errors) == 1, errors
    assert str(path) in errors[0] and reason in errors[0] and "\n" not in errors[0], errors[0]
    assert LOADED not in caplog.text  # the input is checked before the model loads
    assert not (tmp_path / "out.npy").exists() and not list(tmp_path.glob("*.part"))


@pytest.mark.parametrize("case", list(BAD_OUTPUTS))
def test_bad_output_fails_before_any_frame_is_computed(tmp_path, caplog, case):
    make, reason = BAD_OUTPUTS[case]
    _npy(tmp_path / "in.npy")
    output = make(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    with caplog.at_level(logging.INFO):
        code = main(["render", *SMALL, "--input", str(tmp_path / "in.npy"), "--output", output])
    errors = _errors(caplog)
    assert code == 2 and len(errors) == 1, errors
    assert output in errors[0] and reason in errors[0] and "\n" not in errors[0], errors[0]
    assert LOADED not in caplog.text  # checked before the model loads: no work done and then lost
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing made, nothing left behind


def test_a_folder_the_output_made_is_removed_when_it_fails(tmp_path, caplog):
    """The output folder is made when checked; a failure before the first frame takes it away again."""
    _npy(tmp_path / "in.npy")
    args = ["--set", "model.id=/no/model", "--input", str(tmp_path / "in.npy")]
    code = main(["render", *SMALL, *args, "--output", str(tmp_path / "new" / "deeper" / "o.npy")])
    assert code == 2 and "model folder not found" in _errors(caplog)[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path, caplog):
    """/dev/full fails every write with ENOSPC; the .npy is written through `<name>.part`, here a link to it."""
    _npy(tmp_path / "in.npy")
    (tmp_path / "out.npy.part").symlink_to("/dev/full")
    with caplog.at_level(logging.INFO):
        code = main(["render", *SMALL, "--input", str(tmp_path / "in.npy"), "--output", str(tmp_path / "out.npy")])
    errors = _errors(caplog)
    assert code == 2 and len(errors) == 1, errors
    assert str(tmp_path / "out.npy") in errors[0] and "No space left on device" in errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]  # the partial file is gone


def _cli(*args: str, **popen: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "engine.commands.cli", "render", *SMALL, *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, **popen)


@pytest.mark.skipif(sys.platform != "linux", reason="uses /proc and RLIMIT_FSIZE, which are Linux's")
def test_the_command_prints_one_line_and_no_traceback(tmp_path):
    """The two cases from the bug report, and a file-size limit (EFBIG, what a quota does), through the real
    command: stderr is the one error line, exit code 2."""
    import resource

    _npy(tmp_path / "in.npy")
    (tmp_path / "empty.npy").write_bytes(b"")

    def limit_file_size() -> None:  # Python ignores SIGXFSZ, so a write past the limit raises EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    source = str(tmp_path / "in.npy")
    cases = [
        (_cli("--input", str(tmp_path / "empty.npy"), "--output", str(tmp_path / "o.npy")), "empty.npy: empty file"),
        (_cli("--input", source, "--output", "/proc/nope/o.npy"), "/proc/nope (No such file"),
        (
            _cli("--input", source, "--output", str(tmp_path / "big.npy"), preexec_fn=limit_file_size),
            "big.npy: writing frame 0 failed (File too large)",
        ),
    ]
    for done, reason in cases:
        lines = [line for line in done.stderr.splitlines() if not line.startswith("INFO ")]
        assert done.returncode == 2 and len(lines) == 1 and reason in lines[0], done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.npy", "in.npy"]
