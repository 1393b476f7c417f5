"""One decoding step of the selective scan in Triton (real or complex A): the state is read, advanced and written in
place by one program per (batch row, block of channels); the output is gated in the same kernel. A complex state,
A, B and C are read as (real, imaginary) pairs (`torch.view_as_real`): exp(Δ·A) = exp(Δ·Re A)·(cos, sin)(Δ·Im A)
by `_complex_step`, and y = 2·Re(Σ_n C_n h_n)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..host import cast, cdiv, next_power_of_2
from ..selective_scan.triton_tiles import _block_d, _complex_step, _join_pairs, _sigmoid, _softplus, _split_pairs
from .naive import selective_state_update_naive


@triton.jit
def _state_update_kernel(state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, idx_ptr,
                         dim, n_state, n_groups, dim_per_group,
                         HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                         HAS_IDX: tl.constexpr, COMPLEX: tl.constexpr, BLOCK_D: tl.constexpr,
                         BLOCK_N: tl.constexpr):
    """COMPLEX: state, A, B and C are complex64 tensors seen as fp32 (…, 2) pairs, each row's N pairs loaded as 2N
    floats in a row (wide accesses) and split into (real, imaginary) tiles in registers."""
    pid_b = tl.program_id(0).to(tl.int64)
    d0 = tl.program_id(1) * BLOCK_D
    offs_d = d0 + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d, mask_n = offs_d < dim, offs_n < n_state
    mask_dn = mask_d[:, None] & mask_n[None, :]
    if HAS_IDX:
        state_row = tl.load(idx_ptr + pid_b).to(tl.int64)
    else:
        state_row = pid_b
    if COMPLEX:  # pair offsets: 2·(complex offset) + (0 real, 1 imaginary), as 2·BLOCK_N floats per row
        offs_2n = tl.arange(0, 2 * BLOCK_N)
        mask_2n = offs_2n < 2 * n_state
        mask_pairs = mask_d[:, None] & mask_2n[None, :]
        state_pairs = (state_row * dim + offs_d)[:, None] * (2 * n_state) + offs_2n[None, :]
        h, h_im = _split_pairs(tl.load(state_ptr + state_pairs, mask=mask_pairs, other=0.0))
        A, A_im = _split_pairs(tl.load(A_ptr + offs_d[:, None] * (2 * n_state) + offs_2n[None, :], mask=mask_pairs,
                                 other=0.0))
    else:
        state_offs = (state_row * dim + offs_d)[:, None] * n_state + offs_n[None, :]
        h = tl.load(state_ptr + state_offs, mask=mask_dn, other=0.0)
        A = tl.load(A_ptr + offs_d[:, None] * n_state + offs_n[None, :], mask=mask_dn, other=0.0)
    io = pid_b * dim + offs_d
    x = tl.load(x_ptr + io, mask=mask_d, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + io, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0)
    if SOFTPLUS:
        dt = _softplus(dt)
    bc_row = (pid_b * n_groups + d0 // dim_per_group) * n_state
    bc = bc_row + offs_n
    decay = tl.exp(dt[:, None] * A)
    dtx = (dt * x)[:, None]
    if COMPLEX:  # h ← exp(Δ·A)·h + Δ·x·B in complex arithmetic; out = 2·Re(Σ_n C_n h_n)
        B, B_im = _split_pairs(tl.load(B_ptr + 2 * bc_row + offs_2n[None, :], mask=mask_2n[None, :], other=0.0))
        C, C_im = _split_pairs(tl.load(C_ptr + 2 * bc_row + offs_2n[None, :], mask=mask_2n[None, :], other=0.0))
        h, h_im = _complex_step(h, h_im, decay, dt[:, None] * A_im, dtx * B, dtx * B_im)
        tl.store(state_ptr + state_pairs, _join_pairs(h, h_im), mask=mask_pairs)
        out = 2.0 * tl.sum(h * C - h_im * C_im, axis=1)
    else:
        B = tl.load(B_ptr + bc, mask=mask_n, other=0.0).to(tl.float32)
        C = tl.load(C_ptr + bc, mask=mask_n, other=0.0).to(tl.float32)
        h = h * decay + dtx * B[None, :]
        tl.store(state_ptr + state_offs, h, mask=mask_dn)
        out = tl.sum(h * C[None, :], axis=1)
    if HAS_D:
        out += tl.load(D_ptr + offs_d, mask=mask_d, other=0.0) * x
    if HAS_Z:
        z = tl.load(z_ptr + io, mask=mask_d, other=0.0).to(tl.float32)
        out = out * z * _sigmoid(z)
    tl.store(out_ptr + io, out.to(out_ptr.dtype.element_ty), mask=mask_d)


def selective_state_update_fused(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                                 state_batch_indices=None):
    """Same contract as `selective_state_update_naive`: in Triton for a contiguous fp32 state (real A) or complex64
    state (complex A, B and C); other states go to the PyTorch step."""
    complex_a = A.is_complex()
    if (state.dtype != (torch.complex64 if complex_a else torch.float32) or not state.is_contiguous()
            or (complex_a and not (B.is_complex() and C.is_complex()))):
        return selective_state_update_naive(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices)
    batch, dim = x.shape
    n_state = A.shape[1]
    if dt.shape != (batch, dim) or A.shape != (dim, n_state) or state.shape[1:] != (dim, n_state):
        raise ValueError(f"selective_state_update: expected state (cache, dim, N), x and dt (batch, dim), "
                         f"A (dim, N); got state {tuple(state.shape)}, x {tuple(x.shape)}, dt {tuple(dt.shape)}, "
                         f"A {tuple(A.shape)}")
    if state_batch_indices is None and state.shape[0] != batch:
        raise ValueError(f"selective_state_update: state has {state.shape[0]} rows for a batch of {batch}")
    groups = 1 if B.dim() == 2 else B.shape[1]
    out = torch.empty_like(x)
    block_d = _block_d(dim // groups, 16)
    block_n = next_power_of_2(n_state)
    if complex_a:  # (real, imaginary) pairs of fp32
        state_f, A32, B, C = (torch.view_as_real(cast(t, torch.complex64)) for t in (state, A, B, C))
    else:
        state_f, A32 = state, cast(A, torch.float32)
    dummy = A32
    _state_update_kernel[(batch, cdiv(dim, block_d))](
        state_f, x.contiguous(), dt.contiguous(), A32, B.contiguous(), C.contiguous(),
        cast(D, torch.float32) if D is not None else dummy, z.contiguous() if z is not None else x,
        cast(dt_bias, torch.float32) if dt_bias is not None else dummy, out,
        state_batch_indices if state_batch_indices is not None else x,
        dim, n_state, groups, dim // groups,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus,
        HAS_IDX=state_batch_indices is not None, COMPLEX=complex_a, BLOCK_D=block_d, BLOCK_N=block_n)
    return out
