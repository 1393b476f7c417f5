"""The Triton decoding step against the PyTorch step (runs in Triton's interpreter without a GPU)."""
from __future__ import annotations

import pytest
import torch

from mamba_bio_audio.kernels import selective_state_update_naive
from mamba_bio_audio.kernels.selective_scan.triton_support import triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason="needs triton (and CUDA or TRITON_INTERPRET=1)")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def inputs(batch=3, dim=8, n=5, groups=None, dtype=torch.float32, complex_a=False):
    """Complex A: Im A at 3·N(0, 1), complex64 B and C (a state to go with it: `fresh_state`)."""
    shape = (batch, n) if groups is None else (batch, groups, n)
    bc_dtype = torch.complex64 if complex_a else dtype
    A = -torch.rand(dim, n) * 4
    return dict(x=torch.randn(batch, dim, dtype=dtype), dt=torch.randn(batch, dim, dtype=dtype),
                A=torch.complex(A, torch.randn(dim, n) * 3) if complex_a else A, B=torch.randn(shape, dtype=bc_dtype),
                C=torch.randn(shape, dtype=bc_dtype), D=torch.randn(dim), z=torch.randn(batch, dim, dtype=dtype),
                dt_bias=torch.randn(dim) * 0.3)


def fresh_state(rows, kw):
    """(rows, dim, N) random state, complex64 for complex A."""
    return torch.randn(rows, *kw["A"].shape, dtype=torch.complex64 if kw["A"].is_complex() else torch.float32)


def fused(state, **kw):
    from mamba_bio_audio.kernels.selective_state_update.fused import selective_state_update_fused

    moved = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    state_dev = state.to(DEVICE)
    out = selective_state_update_fused(state_dev, **moved)
    state.copy_(state_dev.cpu())
    return out.cpu()


@pytest.mark.parametrize("groups", [None, 2])
@pytest.mark.parametrize("options", ["bare", "full"])
@pytest.mark.parametrize("complex_a", [False, True])
def test_steps_match_pytorch(groups, options, complex_a):
    kw = inputs(groups=groups, complex_a=complex_a)
    if options == "bare":
        kw = {k: kw[k] for k in ("x", "dt", "A", "B", "C")}
        kw["dt"] = kw["dt"].abs()
    else:
        kw["dt_softplus"] = True
    state = fresh_state(3, kw)
    ref_state = state.clone()
    for _ in range(4):  # a few tokens in a row, the state carried in place
        out = fused(state, **kw)
        ref = selective_state_update_naive(ref_state, **kw)
        assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5)
        assert torch.allclose(state, ref_state, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("complex_a", [False, True])
def test_batch_indices_update_only_their_cache_rows(complex_a):
    kw = inputs(complex_a=complex_a)
    cache = fresh_state(6, kw)
    ref_cache = cache.clone()
    index = torch.tensor([4, 0, 2])
    out = fused(cache, **kw, dt_softplus=True, state_batch_indices=index)
    ref = selective_state_update_naive(ref_cache, **kw, dt_softplus=True, state_batch_indices=index)
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5)
    assert torch.allclose(cache, ref_cache, rtol=1e-5, atol=1e-5)
    untouched = [1, 3, 5]
    assert torch.equal(cache[untouched], ref_cache[untouched])
    assert not torch.allclose(cache[index], torch.zeros_like(cache[index]))


def test_bf16_inputs_keep_an_fp32_state():
    kw = inputs(dtype=torch.bfloat16)
    state = torch.randn(3, 8, 5)
    ref_state = state.clone()
    out = fused(state, **kw, dt_softplus=True)
    ref = selective_state_update_naive(ref_state, **kw, dt_softplus=True)
    assert out.dtype == torch.bfloat16 and state.dtype == torch.float32
    assert torch.allclose(out.float(), ref.float(), rtol=2e-2, atol=2e-2)
    assert torch.allclose(state, ref_state, rtol=1e-4, atol=1e-4)
