"""One token through a pre-norm residual Mamba block (real or complex A): two Triton kernels, each spread over the
inner width E so that a batch of any size keeps many SMs busy.

Why: the models' recurrent step runs ≈ 10 small kernels per block (add+norm, in_proj, conv, x_proj, Δ, −exp(A_log),
state update, out_proj and their split-K reductions), each far too small to fill the GPU, so generation is bound by
their count and latency (BENCHMARKS.md: 201 kernels per sample of the SC09 U-Net at batch 1). A first version ran
the whole block in one program per 16 rows; walking E in sequence, each chunk waiting on its loads, it took 30–140 µs.

Here a program owns BLOCK_B rows (16, its products on the tensor cores; 1 at a batch of 1) × BLOCK_E channels of
E, issues all of its loads before any arithmetic, and does:
    _step_in:  residual' = hidden + residual; u = RMSNorm(residual')·w            (BLOCK_B, d)
               x, z = in_proj(u) on its channels; x enters conv_state; x = silu(conv)   (BLOCK_B, BLOCK_E)
               its share of x_proj(x) = (dt_r, B, C), summed over the E tiles by the next kernel
    _step_ssm: (dt_r, B, C) = Σ shares; Δ = softplus(dt_proj(dt_r) + bias); h = exp(Δ·A)·h + Δ·B·x (in place);
               y = (C·h + D·x)·silu(z)                                            (BLOCK_B, BLOCK_E)
               its share of out = out_proj(y); the row block's last program sums the shares   (BLOCK_B, d)
A complex SSM (the YouTubeMix U-Net's) keeps h as (real, imaginary) tiles: exp(Δ·A) = exp(Δ·Re A)·(cos, sin)(Δ·Im A)
(`_complex_step`), B and C come from x_proj as (real, imaginary) halves, and y = 2·Re(C·h) + D·x.
Intermediate values are rounded to the model's dtype where the unfused path rounds them (u, in_proj, conv and
x_proj outputs, Δ before its bias, y), so a step matches the models' own; states and sums are fp32.
"""
from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
try:  # Triton ≥ 3.4: programmatic dependent launch (see `_pdl`)
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:
    gdc_launch_dependents = gdc_wait = None

from ..host import cdiv, next_power_of_2
from ..selective_scan.triton_tiles import _complex_step, _join_pairs, _softplus, _split_pairs, sm_count
from .naive import mamba_block_step_naive


@triton.jit
def _rows_dot(x, w, PRECISION: tl.constexpr):
    """x (BLOCK_B, K) times w (K, N) → (BLOCK_B, N) fp32: on the tensor cores (tl.dot) for 16 rows or more; for
    fewer (a batch of 1), a broadcast product summed over K in fp32, without the masked rows of a 16-row tile."""
    if x.shape[0] >= 16:
        return tl.dot(x, w, input_precision=PRECISION)
    return tl.sum(x.to(tl.float32)[:, :, None] * w.to(tl.float32)[None, :, :], axis=1)


@triton.jit
def _step_in_kernel(hidden_ptr, residual_ptr, residual_out_ptr, norm_w_ptr, in_w_ptr, in_b_ptr, conv_w_ptr, conv_b_ptr,
                    x_w_ptr, conv_state_ptr, xc_ptr, z_ptr, part_ptr, count_ptr, batch, d_model, d_inner, n_proj, eps,
                    HAS_RESIDUAL: tl.constexpr, HAS_IN_BIAS: tl.constexpr, HAS_CONV_BIAS: tl.constexpr,
                    D_CONV: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_DM: tl.constexpr, BLOCK_E: tl.constexpr,
                    BLOCK_P: tl.constexpr, BLOCK_W: tl.constexpr, PRECISION: tl.constexpr, PDL: tl.constexpr):
    """Rows × a tile of E: the norm, in_proj, the conv step and this tile's share of x_proj, written to
    part (n_e_tiles, batch, n_proj) fp32; x after the conv and z to xc, z (batch, E) in the model's dtype. Zeroes
    this row block's count of finished programs for `_step_ssm_kernel`. With PDL (programmatic dependent launch,
    see `_pdl`) it waits for the kernel before it first, then lets the next one start."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    dtype = in_w_ptr.dtype.element_ty
    pid_e = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    offs_dm, offs_p, offs_w = tl.arange(0, BLOCK_DM), tl.arange(0, BLOCK_P), tl.arange(0, BLOCK_W)
    mask_b, mask_e, mask_dm = rows < batch, offs_e < d_inner, offs_dm < d_model
    mask_p, mask_w = offs_p < n_proj, offs_w < D_CONV
    rows64 = rows.to(tl.int64)
    io = rows64[:, None] * d_model + offs_dm[None, :]
    mask_io = mask_b[:, None] & mask_dm[None, :]
    # every load first: none depends on arithmetic, so their latencies overlap
    res = tl.load(hidden_ptr + io, mask=mask_io, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        res += tl.load(residual_ptr + io, mask=mask_io, other=0.0).to(tl.float32)
    norm_w = tl.load(norm_w_ptr + offs_dm, mask=mask_dm, other=0.0).to(tl.float32)
    mask_de = mask_dm[:, None] & mask_e[None, :]
    w_x = tl.load(in_w_ptr + offs_e[None, :] * d_model + offs_dm[:, None], mask=mask_de, other=0.0)      # (d, BE)
    w_z = tl.load(in_w_ptr + (d_inner + offs_e[None, :]) * d_model + offs_dm[:, None], mask=mask_de, other=0.0)
    state_offs = (rows64[:, None, None] * d_inner + offs_e[None, :, None]) * D_CONV + offs_w[None, None, :]
    mask_s = mask_b[:, None, None] & mask_e[None, :, None] & mask_w[None, None, :]
    older = tl.load(conv_state_ptr + state_offs + 1, mask=mask_s & (offs_w < D_CONV - 1)[None, None, :], other=0.0)
    conv_w = tl.load(conv_w_ptr + offs_e[:, None] * D_CONV + offs_w[None, :],
                     mask=mask_e[:, None] & mask_w[None, :], other=0.0).to(tl.float32)                   # (BE, W)
    w_proj = tl.load(x_w_ptr + offs_p[None, :] * d_inner + offs_e[:, None],
                     mask=mask_e[:, None] & mask_p[None, :], other=0.0)                                  # (BE, P)

    if pid_e == 0:
        tl.store(residual_out_ptr + io, res.to(residual_out_ptr.dtype.element_ty), mask=mask_io)
        tl.store(count_ptr + tl.program_id(0), 0)
    rstd = 1.0 / tl.sqrt(tl.sum(res * res, axis=1) / d_model + eps)
    u = (res * rstd[:, None] * norm_w[None, :]).to(hidden_ptr.dtype.element_ty).to(dtype)               # (BB, d)
    x = _rows_dot(u, w_x, PRECISION)                                                                     # (BB, BE)
    z = _rows_dot(u, w_z, PRECISION)
    if HAS_IN_BIAS:
        x += tl.load(in_b_ptr + offs_e, mask=mask_e, other=0.0).to(tl.float32)[None, :]
        z += tl.load(in_b_ptr + d_inner + offs_e, mask=mask_e, other=0.0).to(tl.float32)[None, :]
    mask_be = mask_b[:, None] & mask_e[None, :]
    be = rows64[:, None] * d_inner + offs_e[None, :]
    tl.store(z_ptr + be, z.to(z_ptr.dtype.element_ty), mask=mask_be)
    # conv_state (b, E, W): drop the oldest input, append x; then silu(Σ_w window·weight + bias)
    window = tl.where((offs_w == D_CONV - 1)[None, None, :], x.to(conv_state_ptr.dtype.element_ty)[:, :, None], older)
    tl.store(conv_state_ptr + state_offs, window, mask=mask_s)
    xc = tl.sum(window.to(tl.float32) * conv_w[None, :, :], axis=2)
    if HAS_CONV_BIAS:
        xc += tl.load(conv_b_ptr + offs_e, mask=mask_e, other=0.0).to(tl.float32)[None, :]
    xc = (xc * tl.sigmoid(xc)).to(xc_ptr.dtype.element_ty)
    tl.store(xc_ptr + be, xc, mask=mask_be)
    part = _rows_dot(xc.to(dtype), w_proj, PRECISION)                                                    # (BB, P)
    tl.store(part_ptr + (pid_e * batch + rows64[:, None]) * n_proj + offs_p[None, :], part,
             mask=mask_b[:, None] & mask_p[None, :])


@triton.jit
def _step_ssm_kernel(part_ptr, dt_w_ptr, dt_b_ptr, A_log_ptr, A_imag_ptr, D_ptr, xc_ptr, z_ptr, ssm_state_ptr,
                     out_w_ptr, out_b_ptr, out_part_ptr, count_ptr, out_ptr, y_ptr, batch, d_model, d_inner, dt_rank,
                     d_state, n_proj, n_e_tiles, COMPLEX: tl.constexpr, PAIRS: tl.constexpr,
                     FUSE_OUT: tl.constexpr, HAS_OUT_BIAS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_E: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DM: tl.constexpr, PRECISION: tl.constexpr,
                     PDL: tl.constexpr, BLOCK_T: tl.constexpr):
    """Rows × a tile of E: x_proj's output from the shares in part, Δ, the state update (in place), the gated y and
    this tile's share of out_proj(y), written to out_part (n_e_tiles, batch, d) fp32. The last program of a row
    block to finish (counted in count_ptr, zeroed by `_step_in_kernel`) sums the shares in a fixed order (the result
    does not depend on which program is last) and writes out (batch, d) in the model's dtype. COMPLEX: ssm_state is
    complex64 seen as (batch, E, N, 2) fp32, A_imag (E, N) is given, and the shares are (dt_r, Re B, Im B, Re C, Im C);
    PAIRS (see `_complex_pairs`) loads and stores the state as 2N floats per channel instead of two strided tiles.
    BLOCK_T > 0 (a power of two ≥ n_e_tiles; see `_tiles_at_once`) reads every tile's shares in one load, else a loop.
    With PDL it loads the weights and its states while `_step_in_kernel` runs, and waits for that kernel before
    reading its outputs. It does not let the next kernel start early: on an H100 that made the batch-256 steps slower
    (BENCHMARKS.md)."""
    dtype = dt_w_ptr.dtype.element_ty
    pid_b, pid_e = tl.program_id(0), tl.program_id(1)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    offs_r, offs_n, offs_dm = tl.arange(0, BLOCK_R), tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_DM)
    mask_b, mask_e, mask_r, mask_n = rows < batch, offs_e < d_inner, offs_r < dt_rank, offs_n < d_state
    mask_dm = offs_dm < d_model
    rows64 = rows.to(tl.int64)
    mask_be = mask_b[:, None] & mask_e[None, :]
    be = rows64[:, None] * d_inner + offs_e[None, :]
    mask_en = mask_e[:, None] & mask_n[None, :]
    h_offs = (rows64[:, None, None] * d_inner + offs_e[None, :, None]) * d_state + offs_n[None, None, :]
    mask_h = mask_b[:, None, None] & mask_en[None, :, :]
    # every load first
    w_dt = tl.load(dt_w_ptr + offs_e[None, :] * dt_rank + offs_r[:, None], mask=mask_r[:, None] & mask_e[None, :],
                   other=0.0)                                                                            # (R, BE)
    if FUSE_OUT:
        w_out = tl.load(out_w_ptr + offs_dm[None, :] * d_inner + offs_e[:, None],
                        mask=mask_e[:, None] & mask_dm[None, :], other=0.0)                              # (BE, d)
    dt_b = tl.load(dt_b_ptr + offs_e, mask=mask_e, other=0.0).to(tl.float32)
    A = -tl.exp(tl.load(A_log_ptr + offs_e[:, None] * d_state + offs_n[None, :], mask=mask_en, other=0.0)
                .to(tl.float32))                                                                         # (BE, N)
    Dv = tl.load(D_ptr + offs_e, mask=mask_e, other=0.0).to(tl.float32)
    if COMPLEX:  # (real, imaginary) interleaved
        A_im = tl.load(A_imag_ptr + offs_e[:, None] * d_state + offs_n[None, :], mask=mask_en, other=0.0).to(tl.float32)
        if PAIRS:  # each channel's N pairs as 2N floats in a row (wide accesses), then split
            offs_2n = tl.arange(0, 2 * BLOCK_N)
            pair_offs = ((rows64[:, None, None] * d_inner + offs_e[None, :, None]) * (2 * d_state)
                         + offs_2n[None, None, :])
            mask_pairs = mask_b[:, None, None] & mask_e[None, :, None] & (offs_2n < 2 * d_state)[None, None, :]
            h, h_im = _split_pairs(tl.load(ssm_state_ptr + pair_offs, mask=mask_pairs, other=0.0))
        else:  # real and imaginary parts as two strided tiles
            h = tl.load(ssm_state_ptr + 2 * h_offs, mask=mask_h, other=0.0)
            h_im = tl.load(ssm_state_ptr + 2 * h_offs + 1, mask=mask_h, other=0.0)
    else:
        h = tl.load(ssm_state_ptr + h_offs, mask=mask_h, other=0.0)
    if PDL:  # the loads above are of tensors the previous kernel (this step's `_step_in_kernel`) does not write
        gdc_wait()
    xc = tl.load(xc_ptr + be, mask=mask_be, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + be, mask=mask_be, other=0.0).to(tl.float32)
    bc_width = 2 * d_state if COMPLEX else d_state
    B_im = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)  # complex A only
    C_im = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    if BLOCK_T > 0:  # every tile's share in one load each (T, rows, ·), summed over the tiles
        offs_t = tl.arange(0, BLOCK_T)
        shares = part_ptr + (offs_t[:, None, None] * batch + rows64[None, :, None]) * n_proj
        mask_tb = (offs_t < n_e_tiles)[:, None, None] & mask_b[None, :, None]
        mask_tn = mask_tb & mask_n[None, None, :]
        dt_r = tl.sum(tl.load(shares + offs_r[None, None, :], mask=mask_tb & mask_r[None, None, :], other=0.0), 0)
        B = tl.sum(tl.load(shares + dt_rank + offs_n[None, None, :], mask=mask_tn, other=0.0), 0)
        C = tl.sum(tl.load(shares + dt_rank + bc_width + offs_n[None, None, :], mask=mask_tn, other=0.0), 0)
        if COMPLEX:
            B_im = tl.sum(tl.load(shares + dt_rank + d_state + offs_n[None, None, :], mask=mask_tn, other=0.0), 0)
            C_im = tl.sum(tl.load(shares + dt_rank + bc_width + d_state + offs_n[None, None, :], mask=mask_tn,
                                  other=0.0), 0)
    else:
        dt_r = tl.zeros((BLOCK_B, BLOCK_R), dtype=tl.float32)
        B = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
        C = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
        mask_bn = mask_b[:, None] & mask_n[None, :]
        for tile in range(n_e_tiles):
            shares = part_ptr + (tile * batch + rows64[:, None]) * n_proj
            dt_r += tl.load(shares + offs_r[None, :], mask=mask_b[:, None] & mask_r[None, :], other=0.0)
            B += tl.load(shares + dt_rank + offs_n[None, :], mask=mask_bn, other=0.0)
            C += tl.load(shares + dt_rank + bc_width + offs_n[None, :], mask=mask_bn, other=0.0)
            if COMPLEX:
                B_im += tl.load(shares + dt_rank + d_state + offs_n[None, :], mask=mask_bn, other=0.0)
                C_im += tl.load(shares + dt_rank + bc_width + d_state + offs_n[None, :], mask=mask_bn, other=0.0)

    B = B.to(xc_ptr.dtype.element_ty).to(tl.float32)
    C = C.to(xc_ptr.dtype.element_ty).to(tl.float32)
    dt = _rows_dot(dt_r.to(xc_ptr.dtype.element_ty).to(dtype), w_dt, PRECISION)                         # (BB, BE)
    dt = _softplus(dt.to(xc_ptr.dtype.element_ty).to(tl.float32) + dt_b[None, :])
    # ssm_state (b, E, N) fp32: h = exp(Δ·A)·h + Δ·B·x; y = C·h + D·x, gated by silu(z)
    decay = tl.exp(dt[:, :, None] * A[None, :, :])                                                      # (BB, BE, N)
    dtx = (dt * xc)[:, :, None]
    if COMPLEX:  # h ← (decay·(cos, sin)(Δ·Im A))·h + Δ·x·B in complex arithmetic; y = 2·Re(C·h)
        B_im = B_im.to(xc_ptr.dtype.element_ty).to(tl.float32)
        C_im = C_im.to(xc_ptr.dtype.element_ty).to(tl.float32)
        h, h_im = _complex_step(h, h_im, decay, dt[:, :, None] * A_im[None, :, :], dtx * B[:, None, :],
                                dtx * B_im[:, None, :])
        if PAIRS:
            tl.store(ssm_state_ptr + pair_offs, _join_pairs(h, h_im), mask=mask_pairs)
        else:
            tl.store(ssm_state_ptr + 2 * h_offs, h, mask=mask_h)
            tl.store(ssm_state_ptr + 2 * h_offs + 1, h_im, mask=mask_h)
        y = 2.0 * tl.sum(h * C[:, None, :] - h_im * C_im[:, None, :], axis=2) + Dv[None, :] * xc
    else:
        h = h * decay + dtx * B[:, None, :]
        tl.store(ssm_state_ptr + h_offs, h, mask=mask_h)
        y = tl.sum(h * C[:, None, :], axis=2) + Dv[None, :] * xc
    y = (y * z * tl.sigmoid(z)).to(out_ptr.dtype.element_ty)
    if not FUSE_OUT:
        tl.store(y_ptr + be, y, mask=mask_be)
    else:
        mask_bd = mask_b[:, None] & mask_dm[None, :]
        bd = rows64[:, None] * d_model + offs_dm[None, :]
        tl.store(out_part_ptr + pid_e * batch * d_model + bd, _rows_dot(y.to(dtype), w_out, PRECISION), mask=mask_bd)
        # the shares are written before the count (the barrier orders every thread's stores before the release)
        tl.debug_barrier()
        if tl.atomic_add(count_ptr + pid_b, 1, sem="acq_rel") == n_e_tiles - 1:
            if BLOCK_T > 0:
                offs_t = tl.arange(0, BLOCK_T)
                out = tl.sum(tl.load(out_part_ptr + offs_t[:, None, None] * batch * d_model + bd[None, :, :],
                                     mask=(offs_t < n_e_tiles)[:, None, None] & mask_bd[None, :, :], other=0.0,
                                     cache_modifier=".cg"), 0)
            else:
                out = tl.zeros((BLOCK_B, BLOCK_DM), dtype=tl.float32)
                for tile in range(n_e_tiles):
                    out += tl.load(out_part_ptr + tile * batch * d_model + bd, mask=mask_bd, other=0.0,
                                   cache_modifier=".cg")
            if HAS_OUT_BIAS:
                out += tl.load(out_b_ptr + offs_dm, mask=mask_dm, other=0.0).to(tl.float32)[None, :]
            tl.store(out_ptr + bd, out.to(out_ptr.dtype.element_ty), mask=mask_bd)


def mamba_block_step_fused(hidden, residual, norm_weight, eps, in_proj_weight, conv_weight, conv_bias, x_proj_weight,
                           dt_proj_weight, dt_proj_bias, A_log, D, out_proj_weight, conv_state, ssm_state,
                           in_proj_bias=None, out_proj_bias=None, residual_in_fp32=True, A_imag=None):
    """Same contract as `mamba_block_step_naive`: the Triton kernels for fp32/bf16/fp16 weights (real or complex A),
    the PyTorch step for fp64, states that are not contiguous, and weights not in hidden's dtype."""
    weights = (in_proj_weight, conv_weight, x_proj_weight, dt_proj_weight, out_proj_weight)
    state_dtype = torch.float32 if A_imag is None else torch.complex64
    if (hidden.dtype not in (torch.float32, torch.bfloat16, torch.float16) or ssm_state.dtype != state_dtype
            or not ssm_state.is_contiguous() or not conv_state.is_contiguous() or conv_state.dtype != hidden.dtype
            or any(w.dtype != hidden.dtype for w in weights)):
        return mamba_block_step_naive(hidden, residual, norm_weight, eps, in_proj_weight, conv_weight, conv_bias,
                                      x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D, out_proj_weight,
                                      conv_state, ssm_state, in_proj_bias, out_proj_bias, residual_in_fp32, A_imag)
    return mamba_block_step_kernel(hidden, residual, norm_weight, eps, in_proj_weight, conv_weight, conv_bias,
                                   x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D, out_proj_weight, conv_state,
                                   ssm_state, in_proj_bias, out_proj_bias, residual_in_fp32, A_imag)


# Rows per program: tl.dot's smallest tile, but the whole batch for a batch of 1 or 2 (`_block_b`). Channels of E
# per program: `_block_e`.
BLOCK_B = 16


def _block_b(batch: int, dtype: torch.dtype) -> int:
    """Rows per program: BLOCK_B (products on the tensor cores), or the whole batch, in broadcast products in fp32
    without masked rows, for a batch of 1, and of 2 with fp32 weights (whose tl.dot is not on the tensor cores). On
    an H100 (BENCHMARKS.md, 2026-11-25), µs per step against 16-row programs: batch 1, fp32 6.2 against 9.5
    (d_model 64), 7.0 against 14.2 (128), 9.7 against 19.1 (256); bf16 6.1 / 8.2 / 9.7 against 6.4 / 8.1 / 13.7.
    Batch 2: fp32 6.7 / 10.2 / 19.4 against 9.4 / 15.5 / 22.0, but bf16 7.8 / 10.8 / 10.8 against 6.0 / 8.3 / 14.7;
    fp32 generation at batch 2, samples/s: SC09 U-Net 9,894 → 13,183, YouTubeMix U-Net 22,616 → 32,392."""
    return batch if batch == 1 or (batch == 2 and dtype == torch.float32) else BLOCK_B


def _fuse_out(block_dm: int) -> bool:
    """out_proj inside `_step_ssm_kernel` (its shares summed by the row block's last program) up to d_model 128;
    above, a cuBLAS product after it. On an H100 (BENCHMARKS.md, 2026-11-24) the fused form took the SC09 U-Net's
    d_model-64 step at batch 256 from 12.6 to 10.2 µs (bf16) and 23.0 to 16.6 µs (fp32), but its d_model-256 step
    from 19.5 to 26.2 µs (bf16): there each program's (BLOCK_E, d) slice of out_proj costs more than it saves."""
    return block_dm <= 128


def _block_e(block_dm: int, batch: int, d_inner: int, sms: int) -> int:
    """Channels of E per program: up to d_model 128, 16 while the grid (row blocks × E tiles) fits in one wave of
    programs, one per SM (the second kernel's 8 warps take most of an SM's registers), else 32; above, 16 when the batch
    fits one block of rows, else 32. Measured on an H100 (BENCHMARKS.md), SC09 U-Net generation: 16 at d_model ≤ 128
    took fp32 at batch 256 from 506,620 to 595,369 samples/s, and later bf16 (with out_proj inside and PDL) by 2.2%,
    14.8% and 2.6% at batch 1, 64 and 256; then 32 where 16 needs two waves (d_model 128 at batch 256: 256 programs)
    took its bf16 step from 12.8 to 11.1 µs and bf16 generation at batch 256 from 1,122,750 to 1,229,979 (fp32 690,221 →
    700,737). A d_model-256 fp32 step took 29.6 µs at batch 1 with 32 channels and 21.7 µs with 16, but at batch 256, 16
    channels were slower (fp32 64.0 → 69.6 µs, bf16 19.4 → 32.2 µs)."""
    if block_dm <= 128:
        return 16 if cdiv(batch, BLOCK_B) * cdiv(d_inner, 16) <= sms else 32
    return 16 if batch <= BLOCK_B else 32


def _tiles_at_once(block_b: int, n_e_tiles: int) -> bool:
    """Whether `_step_ssm_kernel` reads the E tiles' shares (of x_proj, and the last program those of out_proj) in
    one load each, (tiles, rows, ·), instead of one tile after the other: in 1-row programs with 16 tiles or more.
    On an H100 (BENCHMARKS.md, 2026-11-25), µs per step at batch 1, one load against the loop: real A, bf16, 8.0 →
    7.2 at d_model 128 (16 tiles) and 10.3 → 7.9 at 256 (32); complex A 9.2 → 7.9 and 12.2 → 8.9; at d_model 64 (8
    tiles) 5.6 → 5.4 (real) but 6.1 → 6.3 (complex). With 16 rows the (tiles, rows, ·) tiles cost more than the
    loop: 7.9 → 13.5 µs at d_model 64 and batch 256."""
    return block_b == 1 and n_e_tiles >= 16


def _complex_pairs(batch: int, block_b: int) -> bool:
    """A complex state read and written as each channel's 2N floats in a row, split into (real, imaginary) tiles in
    registers (`block_b` rows per program); two stride-2 tiles instead for 2 to 16 rows (one partly masked block of 16,
    or a 2-row program of fp32 weights, where pairs were slower: 7.9 → 9.6 µs at d_model 64, 10.4 → 14.1 at 128). On an
    H100 (BENCHMARKS.md, 2026-11-25) pairs took the bf16 step at batch 256 from 31.7 to 10.9 µs (d_model 64), 60.5 to
    20.7 (128) and 106.7 to 68.4 (256), and YouTubeMix generation at batch 256 from 894,134 to 1,704,764 samples/s.
    In 16-row programs at batch 1 they were slower in bf16 (7.4 → 9.0 µs at d_model 64, 9.2 → 16.3 at 128); in
    1-row programs (`_block_b`) faster (bf16 7.3 → 6.0 and 15.2 → 9.2 µs; YouTubeMix generation 15,665 → 18,246)."""
    return block_b == 1 or batch > BLOCK_B


def mamba_block_step_kernel(hidden, residual, norm_weight, eps, in_proj_weight, conv_weight, conv_bias, x_proj_weight,
                            dt_proj_weight, dt_proj_bias, A_log, D, out_proj_weight, conv_state, ssm_state,
                            in_proj_bias=None, out_proj_bias=None, residual_in_fp32=True, A_imag=None):
    """The Triton kernels themselves, for any float dtype but fp64 (tests and benchmarks; `mamba_block_step_fused`
    picks them where they apply). States must be contiguous, conv_state and the weights in hidden's dtype; with
    A_imag (a complex SSM) ssm_state is complex64."""
    batch, d_model = hidden.shape
    d_inner, d_conv = conv_weight.shape
    dt_rank, d_state = dt_proj_weight.shape[1], A_log.shape[1]
    complex_ssm = A_imag is not None
    n_proj = dt_rank + (4 if complex_ssm else 2) * d_state
    if ssm_state.dtype != (torch.complex64 if complex_ssm else torch.float32):
        raise ValueError(f"mamba_block_step: ssm_state is {ssm_state.dtype}; the kernels take "
                         f"{'complex64 with A_imag' if complex_ssm else 'float32 without A_imag'}")
    expected = {"in_proj_weight": (in_proj_weight, (2 * d_inner, d_model)),
                "x_proj_weight": (x_proj_weight, (n_proj, d_inner)),
                "dt_proj_weight": (dt_proj_weight, (d_inner, dt_rank)),
                "out_proj_weight": (out_proj_weight, (d_model, d_inner)),
                "conv_state": (conv_state, (batch, d_inner, d_conv)),
                "ssm_state": (ssm_state, (batch, d_inner, d_state)),
                "A_log": (A_log, (d_inner, d_state))}
    if complex_ssm:
        expected["A_imag"] = (A_imag, (d_inner, d_state))
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"mamba_block_step: {name} has shape {tuple(tensor.shape)}, expected {shape} "
                             f"(batch {batch}, d_model {d_model}, d_inner {d_inner}, dt_rank {dt_rank}, "
                             f"d_state {d_state}, d_conv {d_conv})")
    hidden = hidden.contiguous()
    dtype, device = hidden.dtype, hidden.device
    residual_out = torch.empty(batch, d_model, device=device, dtype=torch.float32 if residual_in_fp32 else dtype)
    xc, z = (torch.empty(batch, d_inner, device=device, dtype=dtype) for _ in range(2))
    out = torch.empty(batch, d_model, device=device, dtype=dtype)
    block_dm = max(16, next_power_of_2(d_model))
    fuse_out = _fuse_out(block_dm)
    y = out if fuse_out else torch.empty(batch, d_inner, device=device, dtype=dtype)  # gated output, before out_proj
    block_e = _block_e(block_dm, batch, d_inner, sm_count(device))
    block_b = _block_b(batch, dtype)
    grid = (cdiv(batch, block_b), cdiv(d_inner, block_e))
    part = torch.empty(grid[1], batch, n_proj, device=device, dtype=torch.float32)  # x_proj's shares per E tile
    count = torch.empty(grid[0], device=device, dtype=torch.int32)  # finished E tiles per row block
    precision = _dot_precision(dtype)
    pdl = _pdl(device)
    launch = {"launch_pdl": True} if pdl else {}
    dummy = hidden  # pointer for absent optional tensors (never read)
    out_part = torch.empty(grid[1], batch, d_model, device=device, dtype=torch.float32) if fuse_out else dummy
    _step_in_kernel[grid](
        hidden, residual.contiguous() if residual is not None else dummy, residual_out, norm_weight,
        in_proj_weight.contiguous(), in_proj_bias if in_proj_bias is not None else dummy, conv_weight.contiguous(),
        conv_bias if conv_bias is not None else dummy, x_proj_weight.contiguous(), conv_state, xc, z, part, count,
        batch, d_model, d_inner, n_proj, eps,
        HAS_RESIDUAL=residual is not None, HAS_IN_BIAS=in_proj_bias is not None, HAS_CONV_BIAS=conv_bias is not None,
        D_CONV=d_conv, BLOCK_B=block_b, BLOCK_DM=block_dm, BLOCK_E=block_e,
        BLOCK_P=max(16, next_power_of_2(n_proj)), BLOCK_W=next_power_of_2(d_conv),
        PRECISION=precision, PDL=pdl, num_warps=8 if block_dm >= 512 else 4, **launch)
    _step_ssm_kernel[grid](
        part, dt_proj_weight.contiguous(), dt_proj_bias, A_log.contiguous(),
        A_imag.contiguous() if complex_ssm else dummy, D, xc, z,
        torch.view_as_real(ssm_state) if complex_ssm else ssm_state,  # complex64 as (b, E, N, 2) fp32
        out_proj_weight.contiguous(), out_proj_bias if out_proj_bias is not None else dummy, out_part, count, out, y,
        batch, d_model, d_inner, dt_rank, d_state, n_proj,
        grid[1], COMPLEX=complex_ssm, PAIRS=complex_ssm and _complex_pairs(batch, block_b), FUSE_OUT=fuse_out,
        HAS_OUT_BIAS=out_proj_bias is not None, BLOCK_B=block_b, BLOCK_E=block_e,
        BLOCK_R=max(16, next_power_of_2(dt_rank)), BLOCK_N=max(16, next_power_of_2(d_state)), BLOCK_DM=block_dm,
        PRECISION=precision, PDL=pdl, num_warps=8 if fuse_out else 4,
        BLOCK_T=next_power_of_2(grid[1]) if _tiles_at_once(block_b, grid[1]) else 0, **launch)
    return out if fuse_out else F.linear(y, out_proj_weight, out_proj_bias), residual_out


def _pdl(device: torch.device) -> bool:
    """Programmatic dependent launch on Hopper and later GPUs (not in Triton's interpreter): both kernels are
    launched so that they may start before the kernel ahead of them in the stream ends. `_step_in_kernel` waits for
    that kernel before any memory access, then lets `_step_ssm_kernel` start; `_step_ssm_kernel` first loads its
    weights and states, which `_step_in_kernel` does not write, then waits. Kernels launched without PDL after them
    wait as usual. On an H100 (BENCHMARKS.md) this took bf16 SC09 U-Net generation at batch 256 from 795,768 to
    940,318 samples/s, and fp32 from 597,046 to 656,525."""
    return (device.type == "cuda" and gdc_wait is not None and os.environ.get("TRITON_INTERPRET", "0") != "1"
            and _hopper_or_later(device))


@functools.cache
def _hopper_or_later(device: torch.device) -> bool:
    """Compute capability 9 or more; cached, as `sm_count` is: the step asks it on every call."""
    return torch.cuda.get_device_capability(device)[0] >= 9


def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 products follow PyTorch's setting for fp32 matmuls (tf32 only if torch.backends.cuda.matmul.allow_tf32);
    bf16/fp16 products are exact in the tensor cores' fp32 accumulation."""
    return "tf32" if dtype != torch.float32 or torch.backends.cuda.matmul.allow_tf32 else "ieee"
