"""`dreamwire render` and `dreamwire bench` end to end, on real files."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from conftest import clip

from bridges.clip_io import iter_clip
from engine.commands.cli import main

SMALL = ["--preset", "offline-demo", "--set", "stream.width=64", "--set", "stream.height=64"]


def test_render_npy_one_output_per_input_frame(tmp_path):
    frames = clip(5)
    np.save(tmp_path / "in.npy", frames)
    assert main(["render", *SMALL, "--input", str(tmp_path / "in.npy"), "--output", str(tmp_path / "out.npy")]) == 0
    out = np.load(tmp_path / "out.npy")
    assert out.shape == (5, 64, 64, 3) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert np.abs(out[-1] - out[-2]).max() > 0  # frames move


def test_render_frame_buffer_size_pads_the_last_group(tmp_path):
    np.save(tmp_path / "in.npy", clip(5))
    args = ["render", *SMALL, "--set", "stream.frame_buffer_size=2", "--input", str(tmp_path / "in.npy")]
    assert main([*args, "--output", str(tmp_path / "out.npy")]) == 0
    assert np.load(tmp_path / "out.npy").shape[0] == 5


def test_render_png_folder_to_video_and_back(tmp_path):
    from PIL import Image

    (tmp_path / "frames").mkdir()
    for i, frame in enumerate(clip(4)):
        Image.fromarray(frame).save(tmp_path / "frames" / f"{i:03d}.png")
    assert main(["render", *SMALL, "--input", str(tmp_path / "frames"), "--output", str(tmp_path / "out.mp4")]) == 0
    assert len(list(iter_clip(tmp_path / "out.mp4"))) == 4
    assert main(["render", *SMALL, "--input", str(tmp_path / "out.mp4"), "--output", str(tmp_path / "pngs")]) == 0
    assert len(list((tmp_path / "pngs").glob("*.png"))) == 4


def test_render_resizes_input_of_another_size(tmp_path, caplog):
    np.save(tmp_path / "in.npy", clip(2, size=96))
    with caplog.at_level(logging.WARNING):
        assert main(["render", *SMALL, "--input", str(tmp_path / "in.npy"), "--output", str(tmp_path / "o.npy")]) == 0
    assert np.load(tmp_path / "o.npy").shape == (2, 64, 64, 3)
    assert "resizing to the stream's 64x64" in caplog.text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "stream.cfg_type=sideways"], "stream.cfg_type: 'sideways'"),
        (["--set", "stream.t_index_list=[40,20]"], "must be strictly ascending"),
        (["--set", "stream.width=100"], "stream.width: 100 is not accepted: Input should be a multiple of 8"),
        (["--set", "model.id=/no/such/model"], "model folder not found: '/no/such/model'"),
        (["--set", "stream.acceleration=tensorrt"], "pip install 'dreamwire[tensorrt]'"),
        (["--set", "stream.cuda_graph=true"], "stream.cuda_graph needs a CUDA device (model.device is cpu)"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, caplog, extra, message):
    np.save(tmp_path / "in.npy", clip(1))
    args = ["render", "--preset", "offline-demo", *extra, "--input", str(tmp_path / "in.npy")]
    assert main([*args, "--output", str(tmp_path / "out.npy")]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and message in errors[0] and "\n" not in errors[0]
    assert not (tmp_path / "out.npy").exists()


def test_bad_npy_input_exits_2(tmp_path, caplog):
    np.save(tmp_path / "in.npy", np.zeros((2, 8, 8), np.uint8))
    assert main(["render", *SMALL, "--input", str(tmp_path / "in.npy"), "--output", str(tmp_path / "o.npy")]) == 2
    assert "in.npy" in caplog.text


def test_bench_only_one_part(capsys):
    assert main(["bench", *SMALL, "--json", "--frames", "3", "--only", "prompt-changes"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"device", "threads", "prompt_changes"}
    changes = report["prompt_changes"]
    assert changes["frames"] == 50 and changes["prompt_changes"] == 5
    assert changes["changing_p99_ms"] > 0 and changes["steady_p99_ms"] > 0
    assert changes["p99_over_median"] == pytest.approx(changes["p99_ms"] / changes["median_ms"])


def test_bench_json(capsys):
    assert main(["bench", "--preset", "offline-demo", "--json", "--frames", "3", *SMALL[2:]]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {m["name"].split(" (")[0]: m for m in report["measurements"]}
    assert rows["cfg none"]["unet_rows_per_frame"] == 2
    assert rows["cfg self"]["unet_rows_per_frame"] == 2
    assert rows["cfg initialize"]["unet_rows_per_frame"] == 3
    assert rows["cfg full"]["unet_rows_per_frame"] == 4
    assert rows["ssf on, static input"]["skip_rate"] > 0.5
    assert rows["ssf on, changing input"]["skip_rate"] == 0
    for row in report["measurements"]:  # model time + the rest = the frame time that fps measured
        assert row["model_ms"] + row["overhead_ms"] == pytest.approx(1000 / row["fps"], rel=1e-6), row["name"]
    assert rows["overhead"]["overhead_ms"] > 0
    ratios = report["ratios"]
    assert ratios["self_vs_full_fps"] == pytest.approx(rows["cfg self"]["fps"] / rows["cfg full"]["fps"])
    batch, sequential = rows["stream batch"]["fps"], rows["sequential"]["fps"]
    assert ratios["stream_batch_vs_sequential_fps"] == pytest.approx(batch / sequential)
    bridges = {cost["bridge"]: cost for cost in report["bridges"]["costs"]}
    assert {"shm (RGB)", "shm (RGBA)"} <= set(bridges) and bridges["shm (RGB)"]["frames"] >= 100
