"""The Triton causal conv1d (forward, gradients, single step) against the PyTorch one."""
from __future__ import annotations

import pytest
import torch

from mamba_bio_audio.kernels import causal_conv1d_naive, causal_conv1d_update_naive
from mamba_bio_audio.kernels.selective_scan.triton_support import triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason="needs triton (and CUDA or TRITON_INTERPRET=1)")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("width", [2, 3, 4])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("length", [1, 37, 300])
def test_conv_matches_pytorch(width, bias, activation, length):
    from mamba_bio_audio.kernels.causal_conv1d.fused import causal_conv1d_fused

    x = torch.randn(2, 20, length, requires_grad=True)
    w = torch.randn(20, width, requires_grad=True)
    b = torch.randn(20, requires_grad=True) if bias else None
    leaves = [t for t in (x, w, b) if t is not None]
    ref = causal_conv1d_naive(x, w, b, activation)
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad((ref * g).sum(), leaves)
    dev = [t.detach().to(DEVICE).requires_grad_() for t in leaves]
    out = causal_conv1d_fused(dev[0], dev[1], dev[2] if bias else None, activation)
    grads = torch.autograd.grad((out * g.to(DEVICE)).sum(), dev)
    assert torch.allclose(out.cpu(), ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, ref_grads):
        assert torch.allclose(got.cpu(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("width", [2, 4])
def test_update_steps_match_the_full_conv(width):
    from mamba_bio_audio.kernels.causal_conv1d.fused import causal_conv1d_update_fused

    x = torch.randn(3, 20, 9)
    w, b = torch.randn(20, width), torch.randn(20)
    full = causal_conv1d_naive(x, w, b, "silu")
    state = torch.zeros(3, 20, width, device=DEVICE)
    ref_state = torch.zeros(3, 20, width)
    for t in range(9):
        out = causal_conv1d_update_fused(x[..., t].to(DEVICE), state, w.to(DEVICE), b.to(DEVICE), "silu")
        ref = causal_conv1d_update_naive(x[..., t], ref_state, w, b, "silu")
        assert torch.allclose(out.cpu(), full[..., t], rtol=1e-5, atol=1e-5)
        assert torch.allclose(out.cpu(), ref, rtol=1e-5, atol=1e-5)
        assert torch.allclose(state.cpu(), ref_state)
