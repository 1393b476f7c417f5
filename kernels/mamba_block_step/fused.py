"""One token through a pre-norm residual Mamba block in a single Triton kernel (real A).

Why: a recurrent step runs ≈ 10 small kernels per block (norm, in_proj, conv, x_proj, dt_proj, state update, gate,
out_proj …), each far too small to fill the GPU, so generation is bound by kernel launches and their latency. Here a
program owns BLOCK_B batch rows and does the whole block for them; the projections are tensor-core products
(BLOCK_B ≥ 16 rows, padded with masked rows at small batch) and the weights are read once per program.

Two passes over the inner width E in chunks of BLOCK_E:
    1. x = in_proj_x(u); shift x into conv_state; x = silu(conv); accumulate x_proj(x) = (dt_r, B, C) over chunks.
    2. Δ = softplus(dt_proj(dt_r)); z = in_proj_z(u); x again from the new conv_state; advance ssm_state;
       y = (C·h + D·x)·silu(z); accumulate out_proj(y).
Pass 2 rereads the conv_state this program wrote in pass 1 (a barrier orders it), so no chunk of x is kept.
Intermediate values are rounded to the model's dtype where the unfused path rounds them (in_proj, conv and x_proj
outputs, Δ before its bias, y), so a bf16 model steps the same in both; states and sums are fp32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..selective_scan.triton_tiles import _softplus
from .naive import mamba_block_step_naive


@triton.jit
def _mamba_block_step_kernel(
        hidden_ptr, residual_ptr, out_ptr, residual_out_ptr, norm_w_ptr,
        in_w_ptr, in_b_ptr, conv_w_ptr, conv_b_ptr, x_w_ptr, dt_w_ptr, dt_b_ptr, A_log_ptr, D_ptr, out_w_ptr, out_b_ptr,
        conv_state_ptr, ssm_state_ptr,
        batch, d_model, d_inner, dt_rank, d_state, eps,
        HAS_RESIDUAL: tl.constexpr, HAS_IN_BIAS: tl.constexpr, HAS_CONV_BIAS: tl.constexpr,
        HAS_OUT_BIAS: tl.constexpr, D_CONV: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_DM: tl.constexpr,
        BLOCK_E: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr,
        PRECISION: tl.constexpr):
    dtype = in_w_ptr.dtype.element_ty
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_dm, offs_r = tl.arange(0, BLOCK_DM), tl.arange(0, BLOCK_R)
    offs_n, offs_w = tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_W)
    mask_b, mask_dm = rows < batch, offs_dm < d_model
    mask_r, mask_n, mask_w = offs_r < dt_rank, offs_n < d_state, offs_w < D_CONV
    rows64 = rows.to(tl.int64)

    # residual' = hidden + residual (fp32); u = RMSNorm(residual')·w, rounded to the model's dtype   (BLOCK_B, d)
    io = rows64[:, None] * d_model + offs_dm[None, :]
    mask_io = mask_b[:, None] & mask_dm[None, :]
    res = tl.load(hidden_ptr + io, mask=mask_io, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        res += tl.load(residual_ptr + io, mask=mask_io, other=0.0).to(tl.float32)
    tl.store(residual_out_ptr + io, res.to(residual_out_ptr.dtype.element_ty), mask=mask_io)
    rstd = 1.0 / tl.sqrt(tl.sum(res * res, axis=1) / d_model + eps)
    u = (res * rstd[:, None] * tl.load(norm_w_ptr + offs_dm, mask=mask_dm, other=0.0).to(tl.float32)[None, :])
    u = u.to(hidden_ptr.dtype.element_ty).to(dtype)

    # pass 1: conv step and x_proj, accumulated over chunks of E
    dt_r = tl.zeros((BLOCK_B, BLOCK_R), dtype=tl.float32)
    B = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    C = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    for e0 in range(0, d_inner, BLOCK_E):
        offs_e = e0 + tl.arange(0, BLOCK_E)
        mask_e = offs_e < d_inner
        w_x = tl.load(in_w_ptr + offs_e[None, :] * d_model + offs_dm[:, None],
                      mask=mask_dm[:, None] & mask_e[None, :], other=0.0)                    # (d, BLOCK_E)
        x = tl.dot(u, w_x, input_precision=PRECISION)                                                                    # (BLOCK_B, BLOCK_E)
        if HAS_IN_BIAS:
            x += tl.load(in_b_ptr + offs_e, mask=mask_e, other=0.0).to(tl.float32)[None, :]
        # conv_state (b, E, W): drop the oldest input, append x
        state_offs = (rows64[:, None, None] * d_inner + offs_e[None, :, None]) * D_CONV + offs_w[None, None, :]
        mask_s = mask_b[:, None, None] & mask_e[None, :, None] & mask_w[None, None, :]
        older = tl.load(conv_state_ptr + state_offs + 1, mask=mask_s & (offs_w < D_CONV - 1)[None, None, :],
                        other=0.0)
        x = x.to(conv_state_ptr.dtype.element_ty)
        window = tl.where((offs_w == D_CONV - 1)[None, None, :], x[:, :, None], older)
        tl.store(conv_state_ptr + state_offs, window, mask=mask_s)
        xc = _conv_silu(window, conv_w_ptr, conv_b_ptr, offs_e, mask_e, offs_w, mask_w, D_CONV, HAS_CONV_BIAS)
        xc = xc.to(hidden_ptr.dtype.element_ty).to(dtype)
        w_dbl = x_w_ptr + offs_e[:, None]                                                    # x_proj (R + 2N, E)
        dt_r += tl.dot(xc, tl.load(w_dbl + offs_r[None, :] * d_inner, mask=mask_e[:, None] & mask_r[None, :],
                                   other=0.0), input_precision=PRECISION)
        B += tl.dot(xc, tl.load(w_dbl + (dt_rank + offs_n[None, :]) * d_inner,
                                mask=mask_e[:, None] & mask_n[None, :], other=0.0), input_precision=PRECISION)
        C += tl.dot(xc, tl.load(w_dbl + (dt_rank + d_state + offs_n[None, :]) * d_inner,
                                mask=mask_e[:, None] & mask_n[None, :], other=0.0), input_precision=PRECISION)
    dt_r = dt_r.to(hidden_ptr.dtype.element_ty).to(dtype)
    B = B.to(hidden_ptr.dtype.element_ty).to(tl.float32)
    C = C.to(hidden_ptr.dtype.element_ty).to(tl.float32)
    tl.debug_barrier()  # pass 2 reads conv_state entries other threads of this program wrote

    # pass 2: Δ, gate, state update and out_proj, accumulated over chunks of E
    out = tl.zeros((BLOCK_B, BLOCK_DM), dtype=tl.float32)
    for e0 in range(0, d_inner, BLOCK_E):
        offs_e = e0 + tl.arange(0, BLOCK_E)
        mask_e = offs_e < d_inner
        dt = tl.dot(dt_r, tl.load(dt_w_ptr + offs_e[None, :] * dt_rank + offs_r[:, None],
                                  mask=mask_r[:, None] & mask_e[None, :], other=0.0),
                    input_precision=PRECISION)                                                  # (BLOCK_B, BLOCK_E)
        dt = dt.to(hidden_ptr.dtype.element_ty).to(tl.float32)
        dt = _softplus(dt + tl.load(dt_b_ptr + offs_e, mask=mask_e, other=0.0).to(tl.float32)[None, :])
        z = tl.dot(u, tl.load(in_w_ptr + (d_inner + offs_e[None, :]) * d_model + offs_dm[:, None],
                              mask=mask_dm[:, None] & mask_e[None, :], other=0.0), input_precision=PRECISION)
        if HAS_IN_BIAS:
            z += tl.load(in_b_ptr + d_inner + offs_e, mask=mask_e, other=0.0).to(tl.float32)[None, :]
        z = z.to(hidden_ptr.dtype.element_ty).to(tl.float32)
        state_offs = (rows64[:, None, None] * d_inner + offs_e[None, :, None]) * D_CONV + offs_w[None, None, :]
        mask_s = mask_b[:, None, None] & mask_e[None, :, None] & mask_w[None, None, :]
        window = tl.load(conv_state_ptr + state_offs, mask=mask_s, other=0.0)
        xc = _conv_silu(window, conv_w_ptr, conv_b_ptr, offs_e, mask_e, offs_w, mask_w, D_CONV, HAS_CONV_BIAS)
        xc = xc.to(hidden_ptr.dtype.element_ty).to(tl.float32)
        # ssm_state (b, E, N) fp32: h = exp(Δ·A)·h + Δ·B·x; y = C·h + D·x, gated by silu(z)
        mask_en = mask_e[:, None] & mask_n[None, :]
        A = -tl.exp(tl.load(A_log_ptr + offs_e[:, None] * d_state + offs_n[None, :], mask=mask_en,
                            other=0.0).to(tl.float32))
        h_offs = (rows64[:, None, None] * d_inner + offs_e[None, :, None]) * d_state + offs_n[None, None, :]
        mask_h = mask_b[:, None, None] & mask_en[None, :, :]
        h = tl.load(ssm_state_ptr + h_offs, mask=mask_h, other=0.0)
        h = h * tl.exp(dt[:, :, None] * A[None, :, :]) + (dt * xc)[:, :, None] * B[:, None, :]
        tl.store(ssm_state_ptr + h_offs, h, mask=mask_h)
        y = tl.sum(h * C[:, None, :], axis=2) + tl.load(D_ptr + offs_e, mask=mask_e, other=0.0).to(tl.float32)[None, :] * xc
        y = (y * z * tl.sigmoid(z)).to(hidden_ptr.dtype.element_ty).to(dtype)
        out += tl.dot(y, tl.load(out_w_ptr + offs_dm[None, :] * d_inner + offs_e[:, None],
                                 mask=mask_e[:, None] & mask_dm[None, :], other=0.0),
                      input_precision=PRECISION)                                                # (BLOCK_B, d)
    if HAS_OUT_BIAS:
        out += tl.load(out_b_ptr + offs_dm, mask=mask_dm, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + io, out.to(out_ptr.dtype.element_ty), mask=mask_io)


@triton.jit
def _conv_silu(window, conv_w_ptr, conv_b_ptr, offs_e, mask_e, offs_w, mask_w, D_CONV: tl.constexpr,
               HAS_CONV_BIAS: tl.constexpr):
    """window (BLOCK_B, BLOCK_E, BLOCK_W) of the last inputs → silu(Σ_w window·weight + bias) (BLOCK_B, BLOCK_E)."""
    weight = tl.load(conv_w_ptr + offs_e[:, None] * D_CONV + offs_w[None, :],
                     mask=mask_e[:, None] & mask_w[None, :], other=0.0).to(tl.float32)
    xc = tl.sum(window.to(tl.float32) * weight[None, :, :], axis=2)
    if HAS_CONV_BIAS:
        xc += tl.load(conv_b_ptr + offs_e, mask=mask_e, other=0.0).to(tl.float32)[None, :]
    return xc * tl.sigmoid(xc)


def mamba_block_step_fused(hidden, residual, norm_weight, eps, in_proj_weight, conv_weight, conv_bias, x_proj_weight,
                           dt_proj_weight, dt_proj_bias, A_log, D, out_proj_weight, conv_state, ssm_state,
                           in_proj_bias=None, out_proj_bias=None, residual_in_fp32=True):
    """Same contract as `mamba_block_step_naive`: the Triton kernel for bf16/fp16 weights, the PyTorch step otherwise.

    fp32 takes the PyTorch step: with fp32 products in IEEE precision (PyTorch's default for fp32 matmuls) the
    kernel's products run on the FMA units and it is slower than the separate ops (H100, µs per step at batch 1 for
    d_model 64 / 128 / 256: 45 / 613 / 1364 fused against 45 / 54 / 58; BENCHMARKS.md). So do fp64, states that are
    not contiguous, and weights not in hidden's dtype. The models do not call this op yet: their recurrent step
    (Block + Mamba.step over the per-op kernels) generates faster (BENCHMARKS.md, 2026-11-23)."""
    weights = (in_proj_weight, conv_weight, x_proj_weight, dt_proj_weight, out_proj_weight)
    if (hidden.dtype not in (torch.bfloat16, torch.float16) or ssm_state.dtype != torch.float32
            or not ssm_state.is_contiguous() or not conv_state.is_contiguous() or conv_state.dtype != hidden.dtype
            or any(w.dtype != hidden.dtype for w in weights)):
        return mamba_block_step_naive(hidden, residual, norm_weight, eps, in_proj_weight, conv_weight, conv_bias,
                                      x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D, out_proj_weight,
                                      conv_state, ssm_state, in_proj_bias, out_proj_bias, residual_in_fp32)
    return mamba_block_step_kernel(hidden, residual, norm_weight, eps, in_proj_weight, conv_weight, conv_bias,
                                   x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D, out_proj_weight, conv_state,
                                   ssm_state, in_proj_bias, out_proj_bias, residual_in_fp32)


def mamba_block_step_kernel(hidden, residual, norm_weight, eps, in_proj_weight, conv_weight, conv_bias, x_proj_weight,
                            dt_proj_weight, dt_proj_bias, A_log, D, out_proj_weight, conv_state, ssm_state,
                            in_proj_bias=None, out_proj_bias=None, residual_in_fp32=True):
    """The Triton kernel itself, for any float dtype but fp64 (tests and benchmarks; `mamba_block_step_fused` picks
    it where it is the faster path). States must be contiguous, conv_state and the weights in hidden's dtype."""
    batch, d_model = hidden.shape
    d_inner, d_conv = conv_weight.shape
    dt_rank, d_state = dt_proj_weight.shape[1], A_log.shape[1]
    expected = {"in_proj_weight": (in_proj_weight, (2 * d_inner, d_model)),
                "x_proj_weight": (x_proj_weight, (dt_rank + 2 * d_state, d_inner)),
                "dt_proj_weight": (dt_proj_weight, (d_inner, dt_rank)),
                "out_proj_weight": (out_proj_weight, (d_model, d_inner)),
                "conv_state": (conv_state, (batch, d_inner, d_conv)), "ssm_state": (ssm_state, (batch, d_inner, d_state)),
                "A_log": (A_log, (d_inner, d_state))}
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"mamba_block_step: {name} has shape {tuple(tensor.shape)}, expected {shape} "
                             f"(batch {batch}, d_model {d_model}, d_inner {d_inner}, dt_rank {dt_rank}, "
                             f"d_state {d_state}, d_conv {d_conv})")
    hidden = hidden.contiguous()
    out = torch.empty_like(hidden)
    residual_out = torch.empty(batch, d_model, device=hidden.device,
                               dtype=torch.float32 if residual_in_fp32 else hidden.dtype)
    block_dm = max(16, triton.next_power_of_2(d_model))
    block_e = 32 if block_dm >= 256 else 64
    block_b = 16
    dummy = hidden  # pointer for absent optional tensors (never read)
    _mamba_block_step_kernel[(triton.cdiv(batch, block_b),)](
        hidden, residual.contiguous() if residual is not None else dummy, out, residual_out, norm_weight,
        in_proj_weight.contiguous(), in_proj_bias if in_proj_bias is not None else dummy, conv_weight.contiguous(),
        conv_bias if conv_bias is not None else dummy, x_proj_weight.contiguous(), dt_proj_weight.contiguous(),
        dt_proj_bias, A_log.contiguous(), D, out_proj_weight.contiguous(),
        out_proj_bias if out_proj_bias is not None else dummy, conv_state, ssm_state,
        batch, d_model, d_inner, dt_rank, d_state, eps,
        HAS_RESIDUAL=residual is not None, HAS_IN_BIAS=in_proj_bias is not None, HAS_CONV_BIAS=conv_bias is not None,
        HAS_OUT_BIAS=out_proj_bias is not None, D_CONV=d_conv, BLOCK_B=block_b, BLOCK_DM=block_dm, BLOCK_E=block_e,
        BLOCK_R=max(16, triton.next_power_of_2(dt_rank)), BLOCK_N=max(16, triton.next_power_of_2(d_state)),
        BLOCK_W=triton.next_power_of_2(d_conv), PRECISION=_dot_precision(hidden.dtype), num_warps=8 if block_dm >= 256 else 4,
        num_stages=1)
    return out, residual_out


def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 products follow PyTorch's setting for fp32 matmuls (tf32 only if torch.backends.cuda.matmul.allow_tf32);
    bf16/fp16 products are exact in the tensor cores' fp32 accumulation."""
    return "tf32" if dtype != torch.float32 or torch.backends.cuda.matmul.allow_tf32 else "ieee"
