"""Triton building blocks shared by the fused scans (real and complex A) and the decoding step: the scan's combine
operator, softplus and Δ from the raw delta, the gated output store, and tile loads with the masks that turn
out-of-range tokens into identity steps (Δ = 0)."""
from __future__ import annotations

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)  # exp(x) = exp2(x·log2 e)
# Tokens a thread holds contiguously in a tile of 2-byte inputs (16-byte loads): the segments of `_reverse_scan`.
# Another value only adds a layout conversion; the result is the same.
REVERSE_SEG = tl.constexpr(8)


@triton.jit
def _combine(a1, x1, a2, x2):
    """(a1, x1) then (a2, x2): h ↦ a2·(a1·h + x1) + x2."""
    return a1 * a2, a2 * x1 + x2


@triton.jit
def _combine_with_tail(a1, x1, e1, f1, a2, x2, e2, f2):
    """Reverse-scan operator on segments carried as (whole segment, segment without its first element), each an
    (a, x) pair; 1 is the later segment, 2 the earlier. Its scan's second pair is the exclusive reverse scan."""
    a, x = _combine(a1, x1, a2, x2)
    e, f = _combine(a1, x1, e2, f2)
    return a, x, e, f


@triton.jit
def _reverse_scan(a, w, SEG: tl.constexpr):
    """The reverse scan along axis 1 of the pairs (a, w), fp32 [R, T]: λ_t = w_t + a_t·λ_{t+1} and p_t = Π_{s≥t} a_s,
    returned as (p, λ). Blocked: each row as segments of SEG tokens (those a thread holds contiguously, so that the
    reshape moves no data; T a multiple of SEG), each segment scanned inside its thread as flip, forward scan, flip,
    then an exclusive reverse scan over the segments' totals gives each segment what follows it.
    Triton's own reverse scan moves every element through ~20 warp shuffles, even where the axis lies inside a thread.
    Compiled for sm_90 (Triton 3.6 and 3.8; BENCHMARKS.md), against Triton's: [16, 64] tile over 4 warps, 26 shuffles
    and 144 instructions against 168 and 280; [1, 1024] over 2 warps, 60 and 336 against 344 and 584."""
    R: tl.constexpr = a.shape[0]
    S: tl.constexpr = a.shape[1] // SEG
    a_seg, w_seg = tl.reshape(a, [R, S, SEG]), tl.reshape(w, [R, S, SEG])
    p_seg, lam_seg = tl.associative_scan((tl.flip(a_seg, 2), tl.flip(w_seg, 2)), axis=2, combine_fn=_combine)
    p_seg, lam_seg = tl.flip(p_seg, 2), tl.flip(lam_seg, 2)
    first = tl.arange(0, SEG)[None, None, :] == 0
    P = tl.sum(tl.where(first, p_seg, 0.0), axis=2)                          # each segment whole, [R, S]
    LAM = tl.sum(tl.where(first, lam_seg, 0.0), axis=2)
    _, _, P_after, LAM_after = tl.associative_scan((P, LAM, tl.full(P.shape, 1.0, tl.float32), tl.zeros_like(P)),
                                                   axis=1, combine_fn=_combine_with_tail, reverse=True)
    p = p_seg * P_after[:, :, None]
    lam = lam_seg + p_seg * LAM_after[:, :, None]
    return tl.reshape(p, a.shape), tl.reshape(lam, a.shape)


@triton.jit
def _softplus(x):
    return tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _delta(raw, bias, mask, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Δ as fp32 from the raw delta loaded over a tile: + bias, softplus, 0 (the identity step) outside mask."""
    dt = raw.to(tl.float32)
    if HAS_BIAS:
        dt += bias
    if SOFTPLUS:
        dt = _softplus(dt)
    return tl.where(mask, dt, 0.0)


@triton.jit
def _store_output(out_ptr, pre_ptr, z_ptr, offs, y, mask, HAS_Z: tl.constexpr, SAVE_PRE: tl.constexpr):
    """out = y·silu(z) (or y) at offs in out's dtype; with SAVE_PRE also y itself, the output before the gate."""
    if HAS_Z:
        if SAVE_PRE:
            tl.store(pre_ptr + offs, y.to(pre_ptr.dtype.element_ty), mask=mask)
        z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        y = y * z * tl.sigmoid(z)
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _load_tile(u_ptr, dt_ptr, bias, rows, t, mask_d, L, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
               t_lo, t_hi):
    """u and Δ of one tile as fp32 [BLOCK_D, BLOCK_T]; Δ = 0 (the identity step) outside [t_lo, t_hi) ∩ [0, L)."""
    valid = (t >= t_lo) & (t < t_hi) & (t < L) & (t >= 0)
    mask = mask_d[:, None] & valid[None, :]
    offs = rows[:, None] * L + t[None, :]
    u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    raw = tl.load(dt_ptr + offs, mask=mask, other=0.0)
    return u, _delta(raw, bias[:, None] if HAS_BIAS else bias, mask, HAS_BIAS, SOFTPLUS)


@triton.jit
def _load_bc(ptr, row_bc, n_state, t, offs_n, mask_n, L, CONST: tl.constexpr, const_offs, const_mask, t_lo, t_hi):
    """B or C for a tile as fp32: [1, N, BLOCK_T] (variable; row_bc = batch·G + group, int64) or [BLOCK_D, N, 1]
    (constant (dim, N))."""
    if CONST:  # (one return: the compiler wants the same return type on every path, constexpr or not)
        X = tl.load(ptr + const_offs, mask=const_mask, other=0.0).to(tl.float32)[:, :, None]
    else:
        valid = (t >= t_lo) & (t < t_hi) & (t < L) & (t >= 0)
        offs = (row_bc * n_state + offs_n[:, None]) * L + t[None, :]
        X = tl.load(ptr + offs, mask=mask_n[:, None] & valid[None, :], other=0.0).to(tl.float32)[None, :, :]
    return X


@triton.jit
def _program_block(dim, n_state, n_groups, dim_per_group, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's (batch row, channel block): offsets, masks, int64 rows of (batch·dim), the block's B/C row
    (batch·G + group: a block never straddles groups) and the offsets of (dim, N) parameters."""
    pid_b = tl.program_id(0).to(tl.int64)
    d0 = tl.program_id(1) * BLOCK_D
    offs_d = d0 + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d, mask_n = offs_d < dim, offs_n < n_state
    rows = pid_b * dim + offs_d
    row_bc = pid_b * n_groups + d0 // dim_per_group
    dn_offs = offs_d[:, None] * n_state + offs_n[None, :]
    return offs_d, offs_n, mask_d, mask_n, mask_d[:, None] & mask_n[None, :], rows, row_bc, dn_offs


@triton.jit
def _load_bc_row(ptr, row_bc, n, n_state, t, offs_d, mask_d, L, CONST: tl.constexpr):
    """State n of B or C for a [BLOCK_D, BLOCK_T] tile, fp32: [1, BLOCK_T] (variable, row_bc = batch·G + group) or
    [BLOCK_D, 1] (constant (dim, N)); zero outside [0, L)."""
    if CONST:
        X = tl.load(ptr + offs_d * n_state + n, mask=mask_d, other=0.0).to(tl.float32)[:, None]
    else:
        X = tl.load(ptr + (row_bc * n_state + n) * L + t, mask=(t >= 0) & (t < L), other=0.0).to(tl.float32)[None, :]
    return X


def _block_d(dim_per_group: int, cap: int) -> int:
    """Channels per program: a power of two ≤ cap dividing the group's channel count (one group per block)."""
    block = 1
    while block * 2 <= cap and dim_per_group % (block * 2) == 0:
        block *= 2
    return block


@triton.jit
def _mul_rn(x, y, PTX: tl.constexpr):
    """x·y (fp32) rounded on its own, never fused into a later add or subtract, so that (x·y + 0) − x·y is exactly 0.
    PTX: on a GPU (inline mul.rn); otherwise (the interpreter) a plain product, which numpy never fuses."""
    if PTX:
        r = tl.inline_asm_elementwise("mul.rn.f32 $0, $1, $2;", "=r,r,r", [x, y], dtype=tl.float32, is_pure=True,
                                      pack=1)
    else:
        r = x * y
    return r

