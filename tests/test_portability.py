"""Windows and macOS are where the users are (Spout, Syphon); CI is Linux. Every module of engine/ and bridges/
imports, and `dreamwire --help`, `render`, `bench --frames 4` and `run --duration 2` work, with the Unix-only
modules (resource, fcntl, termios) unimportable, on the real platform and with sys.platform made win32 and
darwin for our code (tests/portability/sitecustomize.py says how). On "Windows", Ctrl-C and Ctrl-Break stop
`run` cleanly.

One subprocess per platform runs all the commands (tests/portability/drive.py); `bench` runs in the win32 one
only, as it takes a minute on a 2-core machine and test_cli runs it on Linux already.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIM = ROOT / "tests" / "portability"

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="fakes other platforms on Linux (/proc, SIGUSR1)")


def _env(platform: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SHIM), str(ROOT)]), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("DREAMWIRE_FAKE_PLATFORM", None)
    if platform != "linux":
        env["DREAMWIRE_FAKE_PLATFORM"] = platform
    if platform == "win32":
        env["PYTHONIOENCODING"] = "cp1252"  # a Windows console's output redirected to a file or a pipe
    return env


@pytest.mark.parametrize("platform", ["linux", "win32", "darwin"])
def test_every_module_and_command_without_unix_only_modules(tmp_path, platform):
    command = [sys.executable, str(SHIM / "drive.py"), str(tmp_path)] + (["--bench"] if platform == "win32" else [])
    done = subprocess.run(command, env=_env(platform), capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["platform"] == platform and report["hidden"] == ["fcntl", "resource", "termios"]
    assert report["imported"] >= 40  # every module of engine/ and bridges/ (45 when this was written)
    expected = {"help": 0, "render": 0, "run": 0, **({"bench": 0} if platform == "win32" else {})}
    assert report["codes"] == expected, done.stderr[-3000:]
    assert "usage: dreamwire" in done.stdout and "{render,run,bench" in done.stdout
    assert report["render_frames"] == 3 and report["run_frames"] >= 1
    if platform == "win32":
        assert report["bench_measurements"] >= 8
    # The branches on sys.platform.
    windows = platform == "win32"
    stops = [signal.SIGINT, signal.SIGUSR1 if windows else signal.SIGTERM]  # SIGUSR1: the stand-in for SIGBREAK
    assert report["stop_signals"] == [int(sig) for sig in stops]
    assert report["preview_reuses_address"] is not windows  # on Windows it would let two servers share a port
    assert report["file_uri_path"] == ("C:/clips/a.mp4" if windows else "/C:/clips/a.mp4")
    assert report["rss_mb"] > 10  # a Python with torch loaded: well over 10 MiB resident


@pytest.mark.parametrize(("key", "sent"), [("Ctrl-C", signal.SIGINT), ("Ctrl-Break", signal.SIGUSR1)])
def test_ctrl_c_and_ctrl_break_stop_run_cleanly_on_windows(tmp_path, key, sent):
    """`dreamwire run` as "Windows" sees it: the key's signal stops it with exit 0 and its file finished."""
    out, log = tmp_path / "out.npy", tmp_path / "stderr.txt"
    command = [sys.executable, "-m", "engine.commands.cli", "run", "--preset", "offline-demo"]
    command += ["--set", "stream.width=64", "--set", "stream.height=64", "--input", "pattern:?width=64&height=64"]
    command += ["--set", "osc.port=0"]  # any free port: never collide with a dreamwire already on 9000
    with open(log, "w", encoding="utf-8") as stderr:
        process = subprocess.Popen([*command, "--output", f"file:{out}"], env=_env("win32"), stderr=stderr, cwd=ROOT)
        try:
            deadline = time.monotonic() + 120
            part = tmp_path / "out.npy.part"  # grows once frames are written
            while not (part.exists() and part.stat().st_size > 128) and process.poll() is None:
                assert time.monotonic() < deadline, log.read_text(encoding="utf-8")
                time.sleep(0.1)
            process.send_signal(sent)
            code = process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
    text = log.read_text(encoding="utf-8")
    assert code == 0, text
    assert f"{signal.Signals(sent).name}: stopping" in text and "stopped after" in text, text
    frames = np.load(out)  # finished: renamed from .part with the final frame count
    assert frames.shape[0] >= 1 and frames.shape[1:] == (64, 64, 3)


TEMPO_MODULES = [
    "engine.live.beat_clock",
    "engine.live.quantiser",
    "engine.live.modulators",
    "engine.live.tempo",
    "engine.control.tempo_commands",
    "engine.control.midi_map",
    "engine.control.midi_clock",
    "engine.control.midi",
    "engine.control.link",
    "engine.control.transports",
]
NO_MIDI_NO_LINK = """
import importlib, json, sys
for name in ("rtmidi", "mido", "aalink"):
    sys.modules[name] = None  # no ALSA, no rtmidi, no Link: `import` raises ImportError
for module in sys.argv[1:]:
    importlib.import_module(module)
from engine.config.presets import load_preset
from engine.control.transports import check_available
from engine.core.errors import DreamwireError
check_available(load_preset("offline-demo"))  # neither configured: nothing is needed
errors = []
for override in ("midi.input=nano", "tempo.source=link"):
    try:
        check_available(load_preset("offline-demo", [override]))
    except DreamwireError as error:
        errors.append(str(error))
print(json.dumps({"errors": errors}))
"""


@pytest.mark.parametrize("platform", ["linux", "win32", "darwin"])
def test_tempo_and_midi_modules_import_without_alsa_rtmidi_or_link(platform):
    command = [sys.executable, "-c", NO_MIDI_NO_LINK, *TEMPO_MODULES]
    done = subprocess.run(command, env=_env(platform), capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])  # (sys.platform is faked for our modules only)
    midi, link = report["errors"]
    assert "python-rtmidi" in midi and "ALSA" in midi and "\n" not in midi
    assert "aalink" in link and "\n" not in link
