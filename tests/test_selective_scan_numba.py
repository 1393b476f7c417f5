"""The numba CPU scan against the token-by-token loop in float64: output, last state and every gradient.

Reuses the case generator and comparison of test_selective_scan (same tolerances, same upstream gradients)."""
from __future__ import annotations

import pytest
import torch

from mamba_bio_audio.kernels import selective_scan_naive
from mamba_bio_audio.kernels.selective_scan.numba_cpu import numba_available, selective_scan_numba
from test_selective_scan import BC_KINDS, F64, TOL, check_against_naive, full_extras, make_case

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba is not installed")


def numba_fn(chunk):
    return lambda **kw: selective_scan_numba(**kw, chunk_size=chunk)


@pytest.mark.parametrize("extras", ["bare", "full"])
@pytest.mark.parametrize("complex_a", [False, True], ids=["realA", "complexA"])
@pytest.mark.parametrize("bc", list(BC_KINDS))
@pytest.mark.parametrize("regime", ["small", "steep"])
@pytest.mark.parametrize("length", [1, 37])
def test_numba_matches_naive_f64(length, regime, bc, complex_a, extras):
    opts = full_extras() if extras == "full" else {}
    case = make_case(length=length, regime=regime, bc=bc, complex_a=complex_a, **opts)
    check_against_naive(case, TOL[F64], 8, fn=numba_fn(8))


@pytest.mark.parametrize("chunk", [1, 5, 64])
@pytest.mark.parametrize("complex_a", [False, True], ids=["realA", "complexA"])
def test_numba_any_chunk_size_and_real_bc(chunk, complex_a):
    case = make_case(length=37, regime="steep", bc="grouped", complex_a=complex_a, real_bc=True, **full_extras())
    check_against_naive(case, TOL[F64], chunk, fn=numba_fn(chunk))


@pytest.mark.parametrize("complex_a", [False, True], ids=["realA", "complexA"])
@pytest.mark.parametrize("regime", ["small", "steep", "flat14"])
def test_numba_fp32(regime, complex_a):
    case = make_case(length=130, regime=regime, bc="var", complex_a=complex_a, dtype=torch.float32, **full_extras())
    check_against_naive(case, TOL[torch.float32], 16, fn=numba_fn(16))


@pytest.mark.parametrize("complex_a", [False, True], ids=["realA", "complexA"])
def test_numba_bf16(complex_a):
    case = make_case(length=130, regime="small", bc="grouped", complex_a=complex_a, real_bc=True,
                     dtype=torch.bfloat16, **full_extras())
    out, h = selective_scan_numba(**case, return_last_state=True)
    assert out.dtype == torch.bfloat16 and h.dtype == (torch.complex64 if complex_a else torch.float32)
    check_against_naive(case, TOL[torch.bfloat16], 16, fn=numba_fn(16))


@pytest.mark.parametrize("complex_a", [False, True], ids=["realA", "complexA"])
def test_numba_gradcheck(complex_a):
    case = make_case(batch=1, dim=2, n=2, length=9, regime="steep", bc="var", complex_a=complex_a, **full_extras())
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]
    inputs = [case[n].detach().clone().requires_grad_() for n in names]

    def fn(*xs):
        kw = dict(zip(names, xs), delta_softplus=True, return_last_state=True)
        out, h = selective_scan_numba(**kw, chunk_size=4)
        return out, torch.view_as_real(h) if h.is_complex() else h

    assert torch.autograd.gradcheck(fn, inputs)


def test_numba_long_sequence_fp32_matches_naive():
    case = make_case(batch=1, dim=2, n=4, length=2 ** 14, regime="steep", bc="var", dtype=torch.float32)
    out, h = selective_scan_numba(**case, return_last_state=True)
    ref, ref_h = selective_scan_naive(**{k: (v.double() if isinstance(v, torch.Tensor) else v)
                                         for k, v in case.items()}, return_last_state=True)
    assert torch.isfinite(out).all()
    assert (out.double() - ref).norm() / ref.norm() <= 1e-4
    assert (h.double() - ref_h).norm() / ref_h.norm() <= 1e-4


def test_numba_saves_only_segment_start_states():
    case = make_case(batch=1, dim=4, n=8, length=4096, regime="small", bc="var", dtype=torch.float32)
    u = case.pop("u").requires_grad_()
    out = selective_scan_numba(u, **case, chunk_size=64)
    node = out.grad_fn
    seen = []
    while node is not None and type(node).__name__ != "_NumbaScanBackward":
        seen.append(type(node).__name__)
        node = node.next_functions[0][0]
    assert node is not None, seen
    saved = sum(t.numel() for t in node.saved_tensors)
    batch_dim, n, length = 4, 8, 4096
    assert saved <= batch_dim * (4 * length + n * (length // 64 + 1)) + 4 * n * length  # never batch·dim·N·L
    assert saved < batch_dim * n * length


@pytest.mark.parametrize("threads", [1, 2])
def test_numba_leaves_torch_thread_count_alone(threads):
    """numba's OpenMP layer shares libgomp with torch: a parallel kernel must not reset torch.set_num_threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        u = torch.randn(2, 4, 40, dtype=F64, requires_grad=True)
        delta, A = torch.rand(2, 4, 40, dtype=F64), -torch.rand(4, 3, dtype=F64)
        B, C = torch.randn(2, 3, 40, dtype=F64), torch.randn(2, 3, 40, dtype=F64)
        selective_scan_numba(u, delta, A, B, C, chunk_size=16).sum().backward()
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
