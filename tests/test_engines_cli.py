"""`dreamwire engines`: key, list, clear, build (without TensorRT here) and export-onnx."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import onnxruntime

from engine.backends.engine_cache import save_engine
from engine.commands.cli import main
from engine.commands.engines import engine_spec_for
from engine.config.presets import load_preset

ROOT = Path(__file__).resolve().parents[1]
DEMO = ["--preset", "offline-demo", "--set", "stream.trt_min_size=64"]


def test_key_prints_the_presets_key(capsys):
    assert main(["engines", "key", *DEMO]) == 0
    key = capsys.readouterr().out.strip()
    assert re.fullmatch(r"[0-9a-f]{24}", key)
    assert key == engine_spec_for(load_preset("offline-demo", ["stream.trt_min_size=64"])).compute_hash()
    assert main(["engines", "key", *DEMO, "--set", "stream.cfg_type=full"]) == 0
    assert capsys.readouterr().out.strip() != key


def test_key_outside_the_profile_is_one_line_and_exit_2(capsys, caplog):
    assert main(["engines", "key", "--preset", "offline-demo"]) == 2  # 128 px < trt_min_size 256
    assert "stream.width 128 is outside the TensorRT resolution profile" in caplog.text


def test_list_and_clear(tmp_path, capsys):
    folder = ["--cache-dir", str(tmp_path)]
    assert main(["engines", "list", *folder]) == 0
    assert "no engines in" in capsys.readouterr().out
    spec = engine_spec_for(load_preset("offline-demo", ["stream.trt_min_size=64"]))
    save_engine(spec, b"x" * 2048, tmp_path)
    assert main(["engines", "list", *folder]) == 0
    line = capsys.readouterr().out
    assert spec.compute_hash() in line and "tiny" in line and "rows 2" in line and "sizes 64..1024" in line
    assert main(["engines", "clear", *folder]) == 0
    assert "removed 1 engine(s)" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_build_without_tensorrt_names_the_extra(monkeypatch, caplog, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert main(["engines", "build", *DEMO, "--cache-dir", str(tmp_path)]) == 2
    assert "pip install 'dreamwire[tensorrt]'" in caplog.text
    assert list(tmp_path.iterdir()) == []


def test_export_onnx_writes_the_graphs(tmp_path):
    """The real command in a subprocess: three graphs that onnxruntime loads, with the documented names."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "engine.commands.cli", "engines", "export-onnx", "--preset", "offline-demo"]
    result = subprocess.run(
        [*command, "--set", "stream.cfg_type=full", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet.onnx", "vae_decoder.onnx", "vae_encoder.onnx"]
    unet = onnxruntime.InferenceSession(str(tmp_path / "unet.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in unet.get_inputs()] == ["sample", "timestep", "encoder_hidden_states"]
    assert unet.get_inputs()[0].shape == ["batch", 4, "height", "width"]
    assert [o.name for o in unet.get_outputs()] == ["latent"]
    assert "UNet with 4 rows" in result.stderr  # cfg full: 2·n·f
