"""The examples run as written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def test_live_cues_example_runs_every_cue(tmp_path):
    out = tmp_path / "cues.npy"
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "live_cues.py"), "--output", f"file:{out}", "--seconds", "10"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]  # 1 if the engine thread died or a cue was not applied
    assert done.stderr.count("cue ") == 4
    for path in ("prompt.text", "prompt.guidance", "prompt.blend", "prompt.seed"):  # each cue's event
        assert f"applied {path}" in done.stderr, path
    frames = np.load(out)
    assert frames.ndim == 4 and len(frames) > 10
