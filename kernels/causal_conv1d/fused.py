"""Causal depthwise conv1d in Triton: forward, backward and the single-step update (widths up to 4 and beyond).

Forward: one program per (batch row, block of channels, block of tokens) adds the W shifted taps of a
[BLOCK_C, BLOCK_T] tile of x (zero before t = 0), the bias, and the optional silu. Backward: one kernel forms
g = ∂L/∂pre-activation and accumulates ∂weight and ∂bias with atomic adds (fp32); a second one forms
∂x_t = Σ_k w_k·g_{t+W−1−k}."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..host import cdiv, next_power_of_2
from .naive import causal_conv1d_update_naive


@triton.jit
def _conv_tile(x_ptr, w_ptr, bias_ptr, rows, offs_c, mask_c, t, L, W: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Pre-activation conv output of a [BLOCK_C, BLOCK_T] tile, fp32."""
    acc = tl.zeros([offs_c.shape[0], t.shape[0]], tl.float32)
    for k in tl.static_range(W):
        src = t - (W - 1) + k
        x = tl.load(x_ptr + rows[:, None] * L + src[None, :], mask=mask_c[:, None] & ((src >= 0) & (src < L))[None, :],
                    other=0.0).to(tl.float32)
        acc += x * tl.load(w_ptr + offs_c * W + k, mask=mask_c, other=0.0).to(tl.float32)[:, None]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)[:, None]
    return acc


@triton.jit
def _conv_fwd_kernel(x_ptr, w_ptr, bias_ptr, out_ptr, channels, L, W: tl.constexpr, HAS_BIAS: tl.constexpr,
                     SILU: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    t = tl.program_id(2) * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_c = offs_c < channels
    rows = pid_b * channels + offs_c
    out = _conv_tile(x_ptr, w_ptr, bias_ptr, rows, offs_c, mask_c, t, L, W, HAS_BIAS)
    if SILU:
        out = out * tl.sigmoid(out)
    tl.store(out_ptr + rows[:, None] * L + t[None, :], out.to(out_ptr.dtype.element_ty),
             mask=mask_c[:, None] & (t < L)[None, :])


@triton.jit
def _conv_bwd_g_kernel(x_ptr, w_ptr, bias_ptr, dout_ptr, g_ptr, dw_ptr, dbias_ptr, channels, L, W: tl.constexpr,
                       HAS_BIAS: tl.constexpr, SILU: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    t = tl.program_id(2) * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_c = offs_c < channels
    mask = mask_c[:, None] & (t < L)[None, :]
    rows = pid_b * channels + offs_c
    g = tl.load(dout_ptr + rows[:, None] * L + t[None, :], mask=mask, other=0.0).to(tl.float32)
    if SILU:
        pre = _conv_tile(x_ptr, w_ptr, bias_ptr, rows, offs_c, mask_c, t, L, W, HAS_BIAS)
        sig = tl.sigmoid(pre)
        g = g * sig * (1.0 + pre * (1.0 - sig))
    g = tl.where(mask, g, 0.0)
    tl.store(g_ptr + rows[:, None] * L + t[None, :], g, mask=mask)
    for k in tl.static_range(W):
        src = t - (W - 1) + k
        x = tl.load(x_ptr + rows[:, None] * L + src[None, :], mask=mask_c[:, None] & ((src >= 0) & (src < L))[None, :],
                    other=0.0).to(tl.float32)
        tl.atomic_add(dw_ptr + offs_c * W + k, tl.sum(g * x, axis=1), mask=mask_c)
    if HAS_BIAS:
        tl.atomic_add(dbias_ptr + offs_c, tl.sum(g, axis=1), mask=mask_c)


@triton.jit
def _conv_bwd_dx_kernel(g_ptr, w_ptr, dx_ptr, channels, L, W: tl.constexpr, BLOCK_C: tl.constexpr,
                        BLOCK_T: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    t = tl.program_id(2) * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_c = offs_c < channels
    rows = pid_b * channels + offs_c
    acc = tl.zeros([BLOCK_C, BLOCK_T], tl.float32)
    for k in tl.static_range(W):
        dst = t + (W - 1) - k
        g = tl.load(g_ptr + rows[:, None] * L + dst[None, :], mask=mask_c[:, None] & (dst < L)[None, :], other=0.0)
        acc += g * tl.load(w_ptr + offs_c * W + k, mask=mask_c, other=0.0).to(tl.float32)[:, None]
    tl.store(dx_ptr + rows[:, None] * L + t[None, :], acc.to(dx_ptr.dtype.element_ty),
             mask=mask_c[:, None] & (t < L)[None, :])


@triton.jit
def _conv_update_kernel(x_ptr, state_ptr, w_ptr, bias_ptr, out_ptr, channels, W: tl.constexpr,
                        BLOCK_W: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_w = tl.arange(0, BLOCK_W)
    mask_c = offs_c < channels
    rows = pid_b * channels + offs_c
    shifted = tl.load(state_ptr + rows[:, None] * W + offs_w[None, :] + 1,
                      mask=mask_c[:, None] & (offs_w < W - 1)[None, :], other=0.0)
    x = tl.load(x_ptr + rows, mask=mask_c, other=0.0)
    new = tl.where((offs_w == W - 1)[None, :], x.to(shifted.dtype)[:, None], shifted)
    tl.debug_barrier()  # every read of the old state happens before the in-place write
    tl.store(state_ptr + rows[:, None] * W + offs_w[None, :], new, mask=mask_c[:, None] & (offs_w < W)[None, :])
    w = tl.load(w_ptr + offs_c[:, None] * W + offs_w[None, :], mask=mask_c[:, None] & (offs_w < W)[None, :], other=0.0)
    out = tl.sum(new.to(tl.float32) * w.to(tl.float32), axis=1)
    if HAS_BIAS:
        out += tl.load(bias_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
    if SILU:
        out = out * tl.sigmoid(out)
    tl.store(out_ptr + rows, out.to(out_ptr.dtype.element_ty), mask=mask_c)


BLOCK_C, BLOCK_T = 16, 128


def _grid(batch, channels, L):
    return batch, cdiv(channels, BLOCK_C), cdiv(L, BLOCK_T)


class _CausalConv1d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, silu: bool):
        x = x.contiguous()
        weight = weight.contiguous()
        batch, channels, L = x.shape
        out = torch.empty_like(x)
        _conv_fwd_kernel[_grid(batch, channels, L)](x, weight, bias if bias is not None else weight, out, channels, L,
                                                    W=weight.shape[1], HAS_BIAS=bias is not None, SILU=silu,
                                                    BLOCK_C=BLOCK_C, BLOCK_T=BLOCK_T)
        ctx.save_for_backward(x, weight, bias)
        ctx.silu = silu
        return out

    @staticmethod
    def backward(ctx, dout):
        x, weight, bias = ctx.saved_tensors
        batch, channels, L = x.shape
        f32 = dict(device=x.device, dtype=torch.float32)
        g = torch.empty(x.shape, **f32)
        dw = torch.zeros(weight.shape, **f32)
        dbias = torch.zeros(channels, **f32) if bias is not None else None
        grid = _grid(batch, channels, L)
        _conv_bwd_g_kernel[grid](x, weight, bias if bias is not None else weight, dout.contiguous(), g, dw,
                                 dbias if dbias is not None else dw, channels, L, W=weight.shape[1],
                                 HAS_BIAS=bias is not None, SILU=ctx.silu, BLOCK_C=BLOCK_C, BLOCK_T=BLOCK_T)
        dx = torch.empty_like(x)
        _conv_bwd_dx_kernel[grid](g, weight, dx, channels, L, W=weight.shape[1], BLOCK_C=BLOCK_C, BLOCK_T=BLOCK_T)
        return dx, dw.to(weight.dtype), dbias.to(bias.dtype) if bias is not None else None, None


def causal_conv1d_fused(x, weight, bias=None, activation=None):
    """Same contract as `causal_conv1d_naive` (x (batch, channels, L), weight (channels, W), bias (channels,))."""
    if activation not in (None, "silu"):
        raise ValueError(f"causal_conv1d: activation must be None or 'silu', got {activation!r}")
    if x.dim() != 3 or weight.dim() != 2 or x.shape[1] != weight.shape[0]:
        raise ValueError(f"causal_conv1d: x must be (batch, {weight.shape[0]}, L), got {tuple(x.shape)}")
    return _CausalConv1d.apply(x, weight, bias, activation == "silu")


def causal_conv1d_update_fused(x, conv_state, weight, bias=None, activation=None):
    """Same contract as `causal_conv1d_update_naive`; a non-contiguous state goes to the PyTorch step."""
    if not conv_state.is_contiguous():
        return causal_conv1d_update_naive(x, conv_state, weight, bias, activation)
    batch, channels, W = conv_state.shape
    out = torch.empty_like(x)
    _conv_update_kernel[(batch, cdiv(channels, BLOCK_C))](
        x.contiguous(), conv_state, weight.contiguous(), bias if bias is not None else weight, out, channels, W=W,
        BLOCK_W=next_power_of_2(W), HAS_BIAS=bias is not None, SILU=activation == "silu", BLOCK_C=BLOCK_C)
    return out
