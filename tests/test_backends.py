"""Backend selection (stream.acceleration), the no-silent-fallback rule, torch.compile on a CPU, the in-place
residual-noise shift, and Apple Metal (mps) device selection with torch's availability checks patched."""

from __future__ import annotations

import logging
import sys
import warnings

import pytest
import torch
from conftest import clip, make_pipeline, to_input

from engine.backends import compiled as compiled_module
from engine.backends.eager import CpuFallbackLog, MpsVae
from engine.backends.select import select_backends
from engine.config.schema import StreamConfig
from engine.core.errors import DreamwireError
from engine.pipeline.codec import make_codec
from engine.pipeline.models import resolve_device


def run(pipeline, frames):
    return [pipeline.step(to_input(frames[i : i + 1])).clone() for i in range(len(frames))]


def test_compile_matches_eager(tiny_taesd_models):
    """torch.compile (Inductor, CPU) of the UNet and TAESD, compiled at prepare, frames equal to eager.

    The first output (n − 1 = 1 warm-up frame) decodes the all-zero initial buffer row, where a GroupNorm
    over a constant input is ill-conditioned (1e-2 between any two kernels); every frame after it matches."""
    settings = {"cfg_type": "self", "t_index_list": [16, 32]}
    compiled = make_pipeline(tiny_taesd_models, {"guidance": 1.4}, acceleration="compile", **settings)
    compiled.warm_up()  # as StreamPipeline.prepared() does: the compile happens here, not on a live frame
    eager = make_pipeline(tiny_taesd_models, {"guidance": 1.4}, **settings)
    assert compiled.acceleration == "compile" and eager.acceleration == "none"
    frames = clip(4)
    differences = [(a - b).abs().max().item() for a, b in zip(run(compiled, frames), run(eager, frames), strict=True)]
    print(f"max |compile - eager| per frame: {differences}")
    assert max(differences[1:]) <= 1e-4


def _select(models, **stream):
    codec = make_codec(models.vae, torch.Generator())
    config = StreamConfig.model_construct(**{**StreamConfig().model_dump(), **stream})  # unvalidated on purpose
    return select_backends(config, models.config, models.unet, models.vae, codec, 1, models.device, models.dtype)


def test_unknown_acceleration_names_the_allowed_ones(tiny_taesd_models):
    with pytest.raises(
        DreamwireError, match=r"stream.acceleration 'warp' is unknown \(allowed: none, compile, tensorrt\)"
    ):
        _select(tiny_taesd_models, acceleration="warp")


def test_tensorrt_without_the_package_names_the_extra(tiny_taesd_models, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError, installed or not
    with pytest.raises(
        DreamwireError, match=r"stream.acceleration 'tensorrt' failed: .*pip install 'dreamwire\[tensorrt\]'"
    ):
        _select(tiny_taesd_models, acceleration="tensorrt")


def test_tensorrt_failure_falls_back_only_when_the_preset_says_so(tiny_taesd_models, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    backends = _select(tiny_taesd_models, acceleration="tensorrt", acceleration_fallback="none")
    assert backends.name == "none"
    assert "stream.acceleration 'tensorrt' failed" in caplog.text and "running eager PyTorch instead" in caplog.text
    assert [r.levelno for r in caplog.records if "tensorrt" in r.getMessage()] == [logging.WARNING]


@pytest.mark.parametrize("fallback", ["error", "none"])
def test_a_failing_compile_stops_the_run_unless_fallback_is_set(tiny_taesd_models, monkeypatch, caplog, fallback):
    def broken(function):
        def call(*args):
            raise RuntimeError("Inductor: no working C++ compiler")

        return call

    monkeypatch.setattr(compiled_module, "compiled", broken)
    pipeline = make_pipeline(tiny_taesd_models, acceleration="compile", acceleration_fallback=fallback)
    frame = to_input(clip(1))
    if fallback == "error":
        with pytest.raises(
            DreamwireError,
            match=r"^stream.acceleration 'compile': the VAE encoder \(input \[1, 3, 64, 64\]\)"
            r" failed: RuntimeError: Inductor: no working C\+\+ compiler",
        ):
            pipeline.step(frame)
    else:
        assert torch.equal(pipeline.step(frame), make_pipeline(tiny_taesd_models).step(frame))
        assert caplog.text.count("running eager PyTorch instead") == 3  # encoder, UNet, decoder: once each


def test_in_place_shift_is_bit_identical_to_the_swap(tiny_taesd_models):
    """The residual noise now shifts in place (fixed address, for CUDA graphs); the outputs are exactly those of
    the former scratch-buffer swap."""
    settings = {"cfg_type": "self", "t_index_list": [8, 24, 40], "frame_buffer_size": 2}
    in_place = make_pipeline(tiny_taesd_models, {"guidance": 1.5}, **settings)
    swapped = make_pipeline(tiny_taesd_models, {"guidance": 1.5}, **settings)

    def swap():  # the former StreamPipeline._shift
        f = swapped.frames
        swapped._stock_scratch[:f].copy_(swapped.noise[:f])
        swapped._stock_scratch[f:].copy_(swapped.stock_noise[:-f])
        swapped.stock_noise, swapped._stock_scratch = swapped._stock_scratch, swapped.stock_noise

    swapped._shift_stock_noise = swap
    address = in_place.stock_noise.data_ptr()
    frames = clip(8)
    for i in range(0, 8, 2):
        batch = to_input(frames[i : i + 2])
        assert torch.equal(in_place.step(batch), swapped.step(batch))
    assert in_place.stock_noise.data_ptr() == address and torch.equal(in_place.stock_noise, swapped.stock_noise)


# ---- Apple Metal (mps) ------------------------------------------------------------------------------------


@pytest.fixture
def metal(monkeypatch):
    """A machine with Metal and no CUDA (as far as torch's availability checks say)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)


def test_auto_picks_cuda_then_mps_then_cpu(monkeypatch, metal):
    assert resolve_device("auto", "auto") == (torch.device("mps"), torch.float16)
    assert resolve_device("mps", "float32") == (torch.device("mps"), torch.float32)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto", "auto") == (torch.device("cpu"), torch.float32)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto", "auto") == (torch.device("cuda"), torch.float16)


def test_mps_unavailable_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(DreamwireError, match=r"^model.device 'mps': Apple Metal is not available here") as error:
        resolve_device("mps", "auto")
    assert "\n" not in str(error.value)


def test_mps_runs_the_eager_backend_logging_cpu_fallbacks(tiny_taesd_models):
    codec = make_codec(tiny_taesd_models.vae, torch.Generator())
    models = tiny_taesd_models
    backends = select_backends(
        StreamConfig(), None, models.unet, models.vae, codec, 1, torch.device("mps"), torch.float16
    )
    assert backends.name == "none" and isinstance(backends.unet, CpuFallbackLog) and isinstance(backends.vae, MpsVae)


def test_cpu_fallbacks_are_logged_once_per_op_and_other_warnings_pass(caplog, monkeypatch):
    monkeypatch.setattr(CpuFallbackLog, "seen", set())

    def op():
        warnings.warn(
            "The operator 'aten::_upsample_bicubic2d_aa.out' is not currently supported on the MPS backend and "
            "will fall back to run on the CPU. This may have performance implications.",
            UserWarning,
            stacklevel=1,
        )
        warnings.warn("something else", DeprecationWarning, stacklevel=1)
        return torch.zeros(1)

    call = CpuFallbackLog(op)
    with warnings.catch_warnings(record=True) as passed:
        warnings.simplefilter("always")
        with caplog.at_level(logging.WARNING):
            call()
            call()
    logged = [r.getMessage() for r in caplog.records if "mps:" in r.getMessage()]
    assert logged == ["mps: aten::_upsample_bicubic2d_aa.out runs on the CPU (slower); this is logged once"]
    assert [str(w.message) for w in passed] == ["something else", "something else"]
