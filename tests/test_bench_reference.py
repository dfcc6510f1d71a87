"""`dreamwire bench --reference-python`: its paths are checked before anything is measured, and the side-by-side
comparison runs both sides over the same clip, model and settings.

The reference side is the real run_reference.py in the reference venv when that venv is there (tests/test_reference.py
makes it: ../shared/tools/reference/setup.sh), else a small stand-in script with the same command line, run by this
python (it records what it was given and answers like the real one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.bench.reference import check_reference, reference_script, reference_side_by_side
from engine.commands.cli import main
from engine.config.presets import load_preset
from engine.core.errors import DreamwireError

SMALL = ["--preset", "offline-demo", "--set", "stream.width=64", "--set", "stream.height=64"]
VENV_PYTHON = Path(os.environ.get("DREAMWIRE_REFERENCE_VENV", "/tmp/streamdiffusion-reference")) / "bin" / "python"
STAND_IN = """
import json, sys
from pathlib import Path
import numpy as np
model_dir, frames_path, out_path, settings = sys.argv[1:5]
frames = np.load(frames_path)
np.save(out_path, np.zeros(frames.shape, np.float32))
given = {"model": (Path(model_dir) / "model_index.json").is_file(), "frames": list(frames.shape)}
(Path(__file__).parent / "given.json").write_text(json.dumps({**given, "settings": json.loads(settings)}))
print("loading... (a line that is not the result)")
print(json.dumps({"fps": 123.0, "frames": len(frames), "shape": list(frames.shape)}))
"""


def _real_reference_python() -> str | None:
    python = os.environ.get("DREAMWIRE_REFERENCE_PYTHON") or str(VENV_PYTHON)
    check = [python, "-c", "import streamdiffusion"]
    if Path(python).exists() and subprocess.run(check, capture_output=True, check=False).returncode == 0:
        return python
    return None


@pytest.fixture
def no_measuring(monkeypatch):
    """Loading the models is the first step of measuring: here it fails the test."""

    def refuse(*_args: object) -> None:
        raise AssertionError("the bench started measuring before it checked the reference")

    monkeypatch.setattr("engine.pipeline.models.load_models", refuse)


def test_a_python_that_does_not_run_is_one_line_and_exit_2_before_measuring(no_measuring, tmp_path, caplog):
    missing = tmp_path / "venv" / "bin" / "python"
    assert main(["bench", *SMALL, "--reference-python", str(missing)]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and str(missing) in errors[0] and "\n" not in errors[0]


def test_a_python_that_fails_is_named_with_its_exit_status(tmp_path):
    failing = tmp_path / "python"
    failing.write_text("#!/bin/sh\necho 'broken venv' >&2\nexit 3\n")
    failing.chmod(0o755)
    with pytest.raises(DreamwireError, match=r"does not run: exit 3, broken venv"):
        check_reference(str(failing), None)


def test_a_missing_reference_script_is_one_line_and_exit_2_before_measuring(no_measuring, tmp_path, caplog):
    script = tmp_path / "run_reference.py"
    assert main(["bench", *SMALL, "--reference-python", sys.executable, "--reference-script", str(script)]) == 2
    assert f"--reference-script {str(script)!r}: no such file" in caplog.text


def test_the_default_script_is_found_in_shared_next_to_or_above_the_checkout(monkeypatch, tmp_path):
    monkeypatch.delenv("DREAMWIRE_REFERENCE_SCRIPT", raising=False)
    checkout = tmp_path / "work" / "wt" / "bench"
    script = tmp_path / "work" / "shared" / "tools" / "reference" / "run_reference.py"
    checkout.mkdir(parents=True)
    monkeypatch.setattr("engine.bench.reference.CHECKOUT", checkout)
    with pytest.raises(DreamwireError, match=r"run_reference\.py not found"):
        reference_script(None)
    script.parent.mkdir(parents=True)
    script.write_text("")
    assert reference_script(None) == script


def test_side_by_side_runs_both_over_the_same_clip_model_and_settings(tmp_path):
    preset = load_preset("offline-demo", ["stream.width=64", "stream.height=64"])
    python = _real_reference_python()
    if python is None:
        print("reference venv absent: the stand-in script plays the reference")
        python, script = sys.executable, tmp_path / "run_reference.py"
        script.write_text(STAND_IN)
    else:
        script = reference_script(None)
    result = reference_side_by_side(
        preset, python, check_reference(python, str(script)), frames=3, repeats=1, clip_frames=6
    )
    assert result["frames"] == 6 and len(result["our_runs_fps"]) == len(result["reference_runs_fps"]) == 1
    assert result["ours_fps"] > 0 and result["ratio"] == pytest.approx(result["ours_fps"] / result["reference_fps"])
    if python != sys.executable:  # the real reference: every frame matches ours (README, "Reference")
        assert result["max_abs_diff"] < 1e-4
        return
    assert result["reference_fps"] == 123.0
    assert 0 < result["max_abs_diff"] <= 1  # ours (in [0, 1], not all zero) against the stand-in's zeros
    given = json.loads((tmp_path / "given.json").read_text())
    assert given["frames"] == [6, 64, 64, 3] and given["model"]  # a diffusers folder of the tiny model
    settings = given["settings"]
    assert settings["t_index_list"] == [32, 45] and settings["cfg_type"] == "self" and "vae_dir" in settings
    assert settings["prompt"] == preset.prompt.text and settings["seed"] == preset.prompt.seed
