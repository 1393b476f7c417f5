"""Residual add + RMSNorm: the PyTorch definition against a float64 formula, and the Triton kernel against it."""
from __future__ import annotations

import pytest
import torch

from mamba_bio_audio.kernels import add_rmsnorm_naive
from mamba_bio_audio.kernels.selective_scan.triton_support import triton_available

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def reference(x, residual, weight, eps):
    s = (x.double() + (residual.double() if residual is not None else 0))
    return s / torch.sqrt(s.pow(2).mean(-1, keepdim=True) + eps) * weight.double(), s


def test_naive_matches_the_formula_and_keeps_fp32_residual():
    x, r, w = torch.randn(3, 5, 24, dtype=torch.bfloat16), torch.randn(3, 5, 24), torch.randn(24)
    y, res = add_rmsnorm_naive(x, r, w, 1e-5, True)
    ref_y, ref_s = reference(x, r, w, 1e-5)
    assert y.dtype == torch.bfloat16 and res.dtype == torch.float32
    assert torch.allclose(res.double(), ref_s)
    assert torch.allclose(y.double(), ref_y, rtol=1e-2, atol=1e-2)


@pytest.mark.skipif(not triton_available(), reason="needs triton (and CUDA or TRITON_INTERPRET=1)")
@pytest.mark.parametrize("dim", [24, 128])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("residual_in_fp32", [False, True])
def test_fused_matches_pytorch_forward_and_backward(dim, with_residual, residual_in_fp32):
    from mamba_bio_audio.kernels.rmsnorm.fused import add_rmsnorm_fused

    x = torch.randn(4, 7, dim, requires_grad=True)
    r = torch.randn(4, 7, dim, requires_grad=True) if with_residual else None
    w = (1 + 0.1 * torch.randn(dim)).requires_grad_()
    leaves = [t for t in (x, r, w) if t is not None]
    y, res = add_rmsnorm_naive(x, r, w, 1e-5, residual_in_fp32)
    gy, gres = torch.randn_like(y), torch.randn_like(res)
    ref_grads = torch.autograd.grad((y * gy).sum() + (res * gres).sum(), leaves)
    dev = [t.detach().to(DEVICE).requires_grad_() for t in leaves]
    y2, res2 = add_rmsnorm_fused(dev[0], dev[1] if with_residual else None, dev[-1], 1e-5, residual_in_fp32)
    assert res2.dtype == res.dtype and y2.dtype == y.dtype
    grads = torch.autograd.grad((y2 * gy.to(DEVICE)).sum() + (res2 * gres.to(DEVICE)).sum(), dev)
    assert torch.allclose(y2.cpu(), y, rtol=1e-5, atol=1e-5)
    assert torch.allclose(res2.cpu(), res)
    for got, want in zip(grads, ref_grads):
        assert torch.allclose(got.cpu(), want, rtol=1e-4, atol=1e-4)
