"""selective_state_update: one decoding step. Stepping token by token must reproduce the full selective scan."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mamba_bio_audio.kernels import selective_scan_naive, selective_state_update, selective_state_update_naive

F64 = torch.float64


def rel_err(x, ref):
    wide = torch.complex128 if (x.is_complex() or ref.is_complex()) else F64
    x, ref = x.detach().to(wide), ref.detach().to(wide)
    assert x.shape == ref.shape, (x.shape, ref.shape)
    den = ref.abs().norm()
    num = (x - ref).abs().norm()
    return float(num / den) if den > 0 else float(num)


def make_sequence(batch=2, dim=4, n=3, length=9, *, complex_a=False, groups=None, extras=True, dtype=F64):
    """A sequence for the scan: u, delta (raw), A, B, C (batch, [G,] N, L), D, z, delta_bias, initial state."""
    cdtype = torch.complex128 if dtype == F64 else torch.complex64
    state_dtype = cdtype if complex_a else dtype
    re_a = -torch.empty(dim, n, dtype=F64).uniform_(0.2, 3.0)
    A = torch.complex(re_a, torch.randn(dim, n, dtype=F64)) if complex_a else re_a
    bc_shape = (batch, n, length) if groups is None else (batch, groups, n, length)
    bc_dtype = torch.complex128 if complex_a else F64
    return dict(
        u=torch.randn(batch, dim, length, dtype=F64).to(dtype),
        delta=(torch.randn(batch, dim, length, dtype=F64) if extras
               else torch.rand(batch, dim, length, dtype=F64) + 0.05).to(dtype),
        A=A.to(state_dtype),
        B=torch.randn(bc_shape, dtype=bc_dtype).to(state_dtype if complex_a else dtype),
        C=torch.randn(bc_shape, dtype=bc_dtype).to(state_dtype if complex_a else dtype),
        D=torch.randn(dim, dtype=F64).to(dtype) if extras else None,
        z=torch.randn(batch, dim, length, dtype=F64).to(dtype) if extras else None,
        delta_bias=torch.randn(dim, dtype=F64).to(dtype) if extras else None,
        delta_softplus=extras,
        initial_state=torch.randn(batch, dim, n, dtype=torch.complex128 if complex_a else F64).to(state_dtype),
    )


def step_through(fn, seq):
    """Run `fn` (a state-update function) token by token; return outputs (batch, dim, L) and the state tensor."""
    state = seq["initial_state"].clone()
    ptr = state.data_ptr()
    outs = []
    for t in range(seq["u"].shape[-1]):
        out = fn(state, seq["u"][..., t], seq["delta"][..., t], seq["A"], seq["B"][..., t], seq["C"][..., t],
                 D=seq["D"], z=None if seq["z"] is None else seq["z"][..., t], dt_bias=seq["delta_bias"],
                 dt_softplus=seq["delta_softplus"])
        assert out.shape == seq["u"].shape[:2]
        assert out.dtype == seq["u"].dtype
        assert state.data_ptr() == ptr  # updated in place, never reallocated
        outs.append(out)
    return torch.stack(outs, -1), state


@pytest.mark.parametrize("fn", [selective_state_update, selective_state_update_naive], ids=["public", "naive"])
@pytest.mark.parametrize("extras", [False, True], ids=["bare", "z_D_bias_softplus"])
@pytest.mark.parametrize("groups", [None, 2], ids=["plain", "grouped"])
@pytest.mark.parametrize("complex_a", [False, True], ids=["realA", "complexA"])
def test_stepping_equals_scan(complex_a, groups, extras, fn, monkeypatch):
    monkeypatch.delenv("MBA_SCAN_BACKEND", raising=False)
    seq = make_sequence(dim=6, n=4, length=11, complex_a=complex_a, groups=groups, extras=extras)
    outs, state = step_through(fn, seq)
    ref, ref_state = selective_scan_naive(**seq, return_last_state=True)
    assert rel_err(outs, ref) <= 1e-12
    assert rel_err(state, ref_state) <= 1e-12
    assert not torch.equal(state, seq["initial_state"])


def test_grouped_uses_group_of_channel():
    """Channel d reads group d // (dim/G) of B and C: compare with plain (batch, N) calls per group."""
    seq = make_sequence(dim=6, n=3, length=1, groups=3)
    state = seq["initial_state"].clone()
    out = selective_state_update(state, seq["u"][..., 0], seq["delta"][..., 0], seq["A"], seq["B"][..., 0],
                                 seq["C"][..., 0], D=seq["D"], z=seq["z"][..., 0], dt_bias=seq["delta_bias"],
                                 dt_softplus=True)
    for d in range(6):
        g = d // 2
        s = seq["initial_state"][:, d:d + 1].clone()
        o = selective_state_update(s, seq["u"][:, d:d + 1, 0], seq["delta"][:, d:d + 1, 0], seq["A"][d:d + 1],
                                   seq["B"][:, g, :, 0], seq["C"][:, g, :, 0], D=seq["D"][d:d + 1],
                                   z=seq["z"][:, d:d + 1, 0], dt_bias=seq["delta_bias"][d:d + 1], dt_softplus=True)
        assert rel_err(out[:, d:d + 1], o) <= 1e-14
        assert rel_err(state[:, d:d + 1], s) <= 1e-14


def test_single_step_formula():
    """One step against the documented formula, written out explicitly."""
    seq = make_sequence(batch=2, dim=3, n=4, length=1, complex_a=True)
    x, dt, z = seq["u"][..., 0], seq["delta"][..., 0], seq["z"][..., 0]
    A, B, C, D = seq["A"], seq["B"][..., 0], seq["C"][..., 0], seq["D"]
    bias, h = seq["delta_bias"], seq["initial_state"]
    delta = F.softplus(dt + bias)[..., None]
    h_new = torch.exp(delta * A) * h + delta * x[..., None] * B[:, None]
    y = 2 * (h_new * C[:, None]).sum(-1).real
    expected = (y + D * x) * F.silu(z)
    state = h.clone()
    out = selective_state_update(state, x, dt, A, B, C, D=D, z=z, dt_bias=bias, dt_softplus=True)
    assert rel_err(out, expected) <= 1e-14 and rel_err(state, h_new) <= 1e-14


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("complex_a", [False, True], ids=["realA", "complexA"])
def test_reduced_precision_inputs_fp32_state(complex_a, x_dtype):
    """fp32 (complex64) state with fp32/bf16 token inputs: output in x's dtype, state stays fp32 and in place."""
    seq = make_sequence(dim=4, n=3, length=6, complex_a=complex_a)
    seq32 = dict(seq)
    for k in ("u", "delta", "z"):
        seq32[k] = seq[k].to(x_dtype)
    for k in ("B", "C"):
        seq32[k] = seq[k].to(torch.complex64) if complex_a else seq[k].to(x_dtype)
    for k in ("D", "delta_bias"):
        seq32[k] = seq[k].float()
    seq32["A"] = seq["A"].to(torch.complex64 if complex_a else torch.float32)
    seq32["initial_state"] = seq["initial_state"].to(torch.complex64 if complex_a else torch.float32)
    outs, state = step_through(selective_state_update, seq32)
    assert outs.dtype == x_dtype
    assert state.dtype == (torch.complex64 if complex_a else torch.float32)
    wide = {k: (v.to(torch.complex128 if v.is_complex() else F64) if isinstance(v, torch.Tensor) else v)
            for k, v in seq32.items()}
    ref, ref_state = selective_scan_naive(**wide, return_last_state=True)
    tol = 1e-5 if x_dtype == torch.float32 else 1e-2
    assert rel_err(outs, ref) <= tol and rel_err(state, ref_state) <= 1e-5


def test_wrong_shapes_raise_value_error():
    seq = make_sequence(dim=4, n=3, length=1)
    state, x, dt, A = seq["initial_state"].clone(), seq["u"][..., 0], seq["delta"][..., 0], seq["A"]
    B, C = seq["B"][..., 0], seq["C"][..., 0]
    for bad in (dict(x=x[:, :-1]), dict(dt=dt[:1]), dict(A=A[:, :-1]), dict(A=A[:-1])):
        args = dict(state=state, x=x, dt=dt, A=A, B=B, C=C) | bad
        with pytest.raises(ValueError, match=next(iter(bad))):
            selective_state_update(**args)
