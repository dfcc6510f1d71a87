from __future__ import annotations

import math

import pytest
import torch

from engine.core.errors import DreamwireError
from engine.live.blending import blend_embeddings, blend_noise, slerp


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _emb(seed: int, d: int = 32) -> torch.Tensor:
    return torch.randn((1, 77, d), generator=_gen(seed))


def _noise(seed: int) -> torch.Tensor:
    return torch.randn((2, 4, 32, 32), generator=_gen(seed))


@pytest.mark.parametrize("method", ["linear", "slerp"])
def test_single_weight_returns_first_embedding_exactly(method):
    a, b = _emb(0), _emb(1)
    out = blend_embeddings([a, b], [1.0, 0.0], method)
    assert torch.equal(out, a)
    assert out.dtype == a.dtype
    # Only the non-zero weight matters, wherever it is, and it is a copy (mutating it leaves the input intact).
    out2 = blend_embeddings([a, b], [0.0, 3.0], method)
    assert torch.equal(out2, b)
    out2.zero_()
    assert not torch.equal(b, out2)


def test_single_weight_returns_first_noise_exactly():
    a, b = _noise(0), _noise(1)
    assert torch.equal(blend_noise([a, b], [1, 0]), a)
    assert torch.equal(blend_noise([a], [0.25]), a)


def test_linear_is_normalised_weighted_sum():
    a, b, c = _emb(0), _emb(1), _emb(2)
    out = blend_embeddings([a, b, c], [2.0, 1.0, 1.0], "linear")
    torch.testing.assert_close(out, 0.5 * a + 0.25 * b + 0.25 * c)


def test_noise_slerp_midpoint_keeps_gaussian_norm_while_lerp_shrinks():
    a, b = _noise(0), _noise(1)
    norm = (a.norm() + b.norm()) / 2
    mid = blend_noise([a, b], [0.5, 0.5])
    assert abs(mid.norm() / norm - 1.0) < 0.02
    lerp_mid = blend_embeddings([a, b], [0.5, 0.5], "linear")  # the lerp a naive blend would give
    assert abs(lerp_mid.norm() / norm - 1 / math.sqrt(2)) < 0.02
    # Still Gaussian-like per element, and genuinely between the two (not a copy of either).
    assert abs(mid.std().item() - 1.0) < 0.03
    assert 0.6 < torch.nn.functional.cosine_similarity(mid.flatten(), a.flatten(), dim=0) < 0.8


def test_noise_running_slerp_three_seeds_keeps_norm():
    a, b, c = _noise(0), _noise(1), _noise(2)
    out = blend_noise([a, b, c], [1, 1, 1])
    assert abs(out.norm() / a.norm() - 1.0) < 0.02
    # Running slerp: slerp(slerp(a, b, 1/2), c, 1/3). For near-orthogonal inputs that puts c at 60 degrees
    # (cos 0.5) and a, b at cos(30°)·cos(45°) ≈ 0.61: every seed contributes, the last slightly less.
    cos = [torch.nn.functional.cosine_similarity(out.flatten(), x.flatten(), dim=0).item() for x in (a, b, c)]
    assert cos == pytest.approx([0.612, 0.612, 0.5], abs=0.03)
    # A zero weight drops its seed entirely.
    assert torch.equal(blend_noise([a, b, c], [1, 0, 1]), blend_noise([a, c], [1, 1]))


def test_embedding_slerp_keeps_token_norms_linearly_interpolated():
    a = _emb(0)
    b = _emb(1) * 3.0  # different norms per token so the check is meaningful
    t = 0.3
    out = blend_embeddings([a, b], [1 - t, t], "slerp")
    expected = (1 - t) * a.norm(dim=-1) + t * b.norm(dim=-1)
    torch.testing.assert_close(out.norm(dim=-1), expected, rtol=1e-5, atol=1e-5)
    # A lerp would fall short of that norm (the vectors are nearly orthogonal).
    assert (torch.lerp(a, b, t).norm(dim=-1) < expected * 0.9).all()


def test_embedding_slerp_direction_is_spherical():
    # Orthogonal unit rows: the slerp midpoint sits at 45 degrees, i.e. (e0 + e1) / sqrt(2).
    a = torch.zeros(1, 77, 4)
    b = torch.zeros(1, 77, 4)
    a[..., 0] = 1.0
    b[..., 1] = 1.0
    out = blend_embeddings([a, b], [1, 1], "slerp")
    torch.testing.assert_close(out[0, 0], torch.tensor([1.0, 1.0, 0.0, 0.0]) / math.sqrt(2))
    out = blend_embeddings([a, b], [2, 1], "slerp")  # t = 1/3 -> 30 degrees
    torch.testing.assert_close(out[0, 5], torch.tensor([math.cos(math.pi / 6), math.sin(math.pi / 6), 0.0, 0.0]))


def test_embedding_slerp_three_prompts_norm_is_weighted_mean():
    embs = [_emb(0), _emb(1) * 2.0, _emb(2) * 0.5]
    w = [0.2, 0.5, 0.3]
    out = blend_embeddings(embs, w, "slerp")
    expected = sum(wi * e.norm(dim=-1) for wi, e in zip(w, embs, strict=True))
    torch.testing.assert_close(out.norm(dim=-1), expected, rtol=1e-5, atol=1e-5)


def test_slerp_parallel_vectors_fall_back_to_lerp():
    a = torch.randn(1, 77, 16, generator=_gen(3))
    b = a * 2.0  # parallel rows: slerp would divide by sin(0)
    out = slerp(a, b, 0.25)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.lerp(a, b, 0.25))
    zero = torch.zeros_like(a)
    torch.testing.assert_close(slerp(zero, b, 0.5), b * 0.5)


def test_slerp_endpoints_and_dtype():
    a, b = _noise(0).half(), _noise(1).half()
    out = slerp(a, b, 0.5, dim=None, lerp_norm=False)
    assert out.dtype == torch.float16
    torch.testing.assert_close(slerp(a, b, 0.0, dim=None), a)
    torch.testing.assert_close(slerp(a, b, 1.0, dim=None), b)
    a64, b64 = _emb(0).double(), _emb(1).double()
    assert slerp(a64, b64, 0.5).dtype == torch.float64


@pytest.mark.parametrize(
    ("weights", "shown"),
    [([-1.0, 2.0], "-1.0"), ([0.0, 0.0], "[0.0, 0.0]"), ([float("nan"), 1.0], "nan"), ([1.0], "[1.0]")],
)
def test_bad_weights_raise_naming_them(weights, shown):
    with pytest.raises((DreamwireError, ValueError), match="weights") as info:  # a count mismatch is a ValueError
        blend_embeddings([_emb(0), _emb(1)], weights, "linear")
    assert shown in str(info.value)
    with pytest.raises((DreamwireError, ValueError), match="weights"):
        blend_noise([_noise(0), _noise(1)], weights)


def test_shape_mismatch_and_bad_method_raise():
    with pytest.raises(ValueError, match=r"\(1, 77, 16\)"):
        blend_embeddings([_emb(0, 32), _emb(1, 16)], [1, 1], "slerp")
    with pytest.raises(ValueError, match="'cubic'"):
        blend_embeddings([_emb(0)], [1], "cubic")  # type: ignore[arg-type]
