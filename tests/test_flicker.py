"""The flicker metric (engine/bench/flicker.py) checked before it is trusted: on a pure translation an output that
equals the input scores about 0 and one with per-frame noise scores high; then the feature bank lowers the
consecutive-frame difference on the moving clip with the tiny model (the direction, not a number)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import preset

from engine.bench.flicker import (
    SETTINGS,
    clips,
    consecutive_difference,
    flicker_benchmarks,
    merged,
    run_setting,
    warp_error,
)
from engine.core.errors import DreamwireError

pytest.importorskip("cv2", reason="the flicker metric needs OpenCV (the camera extra)")


def test_warp_error_is_about_zero_for_the_input_itself_and_high_for_noise():
    moving = clips(64, 64, 8)["moving"]
    same = moving.astype(np.float32) / 255.0
    noisy = np.clip(same + np.random.default_rng(1).normal(0.0, 0.05, same.shape), 0, 1).astype(np.float32)
    still = warp_error(moving, same)
    assert still < 0.5, f"an output that follows the input exactly: {still:.3f} levels"
    assert warp_error(moving, noisy) > 20 * max(still, 0.1)  # noise of σ 0.05 (12.8 levels) a frame
    # the consecutive difference sees the motion itself; on the static clip both are 0
    static = clips(64, 64, 8)["static"].astype(np.float32) / 255.0
    assert consecutive_difference(static) == 0.0 and consecutive_difference(same) > 5.0


def test_the_moving_clip_is_a_pure_translation():
    moving = clips(32, 48, 4)["moving"]
    assert np.array_equal(moving[1][:, 3:], moving[0][:, :-3])  # 3 px to the right a frame


def test_feature_bank_lowers_the_consecutive_frame_difference(tiny_taesd_models):
    base = preset()
    video = clips(base.stream.height, base.stream.width, 6)["moving"]
    plain = run_setting(tiny_taesd_models, base, video)
    bank = merged(base, {"feature_bank": {"enabled": True, "max_frames": 2, "interval": 1}})
    banked = run_setting(tiny_taesd_models, bank, video)
    before, after = consecutive_difference(plain.outputs), consecutive_difference(banked.outputs)
    assert after < before, f"bank {after:.4f} vs none {before:.4f} levels"


def test_every_setting_is_measured_or_says_why_not(tiny_taesd_models):
    result = flicker_benchmarks(tiny_taesd_models, preset(), frames=4)
    assert list(result["settings"]) == [name for name, _ in SETTINGS]
    for name, entry in result["settings"].items():
        if "not available" in entry:  # a processor of another branch, before the merge: named, not faked
            assert entry["not available"].startswith("processors"), name
            continue
        assert entry["fps"] > 0 and {"static", "moving"} <= entry.keys(), name
    assert result["settings"]["none"]["fps_ratio_to_none"] == 1.0
    assert "fps_ratio_to_none" in result["settings"]["feature_bank 4"]


def test_an_override_this_build_does_not_know_is_one_clear_error():
    with pytest.raises(DreamwireError, match="bogus: this build's preset schema has no such key"):
        merged(preset(), {"bogus": {"x": 1}})
    with pytest.raises(DreamwireError, match=r"feature_bank\.max_frames"):
        merged(preset(), {"feature_bank": {"max_frames": 9}})


def test_rendered_clips_are_scored_from_files(tmp_path, capsys):
    """The real-weights check's last step: `python -m engine.bench.flicker IN OUT …` on files as render writes them."""
    from engine.bench.flicker import main

    moving = clips(64, 64, 6)["moving"]
    np.save(tmp_path / "in.npy", moving)
    follows = moving.astype(np.float32) / 255.0
    np.save(tmp_path / "follows.npy", np.concatenate([np.zeros_like(follows[:1]), follows]))  # one warm-up frame
    noisy = np.clip(follows + np.random.default_rng(2).normal(0.0, 0.05, follows.shape), 0, 1).astype(np.float32)
    np.save(tmp_path / "noisy.npy", noisy)
    main([str(tmp_path / "in.npy"), str(tmp_path / "follows.npy"), "--lag", "1"])
    main([str(tmp_path / "in.npy"), str(tmp_path / "noisy.npy")])
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines() if ".npy" in line]
    follows_warp, noisy_warp = float(rows[0][3]), float(rows[1][3])
    assert follows_warp < 0.5 < 10.0 < noisy_warp
