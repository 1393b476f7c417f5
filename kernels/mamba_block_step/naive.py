"""One token through a pre-norm residual Mamba block, in PyTorch: the definition the fused kernel is tested against.

Shapes: b = batch, d = d_model, E = d_inner, R = dt_rank, N = d_state, W = d_conv.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..causal_conv1d import causal_conv1d_update_naive
from ..rmsnorm import add_rmsnorm_naive
from ..selective_state_update import selective_state_update_naive


def mamba_block_step_naive(hidden, residual, norm_weight, eps, in_proj_weight, conv_weight, conv_bias, x_proj_weight,
                           dt_proj_weight, dt_proj_bias, A_log, D, out_proj_weight, conv_state, ssm_state,
                           in_proj_bias=None, out_proj_bias=None, residual_in_fp32=True, A_imag=None):
    """residual' = hidden + residual; u = RMSNorm(residual')·norm_weight; then Mamba's recurrent step on u:

        x, z = in_proj(u)                      (b, E) each
        x = silu(conv_step(conv_state, x))     conv_state (b, E, W) shifted by one, in place
        dt_r, B, C = x_proj(x)                 (b, R), (b, N), (b, N)
        Δ = softplus(dt_proj(dt_r))            (b, E)
        h = exp(Δ·A)·h + Δ·B·x,  A = −exp(A_log)   ssm_state (b, E, N) fp32, in place
        y = (C·h + D·x)·silu(z);  out = out_proj(y)

    Complex SSM (`A_imag` (E, N) given, ssm_state complex64): A = −exp(A_log) + i·A_imag; x_proj gives (b, R + 4N),
    B and C as (real, imaginary) halves of 2N each; y = (2·Re(C·h) + D·x)·silu(z), as `Mamba.step` computes it.

    hidden (b, d) in the model's dtype; residual (b, d) or None (the first block); weights as nn.Linear/Conv1d hold
    them (in_proj (2E, d), conv (E, W), x_proj (R + 2N, E), dt_proj (E, R), out_proj (d, E)); A_log (E, N), D (E,).
    Returns (out (b, d) in hidden's dtype, residual' (b, d), fp32 if `residual_in_fp32`)."""
    if ssm_state.is_complex() != (A_imag is not None):
        raise ValueError(f"mamba_block_step: a {'complex' if ssm_state.is_complex() else 'real'} ssm_state "
                         f"({ssm_state.dtype}) {'needs' if ssm_state.is_complex() else 'takes no'} A_imag")
    u, residual = add_rmsnorm_naive(hidden, residual, norm_weight, eps, residual_in_fp32)
    x, z = F.linear(u, in_proj_weight, in_proj_bias).chunk(2, dim=-1)
    x = causal_conv1d_update_naive(x, conv_state, conv_weight, conv_bias, activation="silu")
    dt_rank, d_state = dt_proj_weight.shape[1], A_log.shape[1]
    real = ssm_state.real.dtype if ssm_state.is_complex() else ssm_state.dtype           # fp32 (fp64 for fp64)
    bc_width = 2 * d_state if A_imag is not None else d_state
    dt, B, C = torch.split(F.linear(x, x_proj_weight), [dt_rank, bc_width, bc_width], dim=-1)
    A = -torch.exp(A_log.to(real))
    if A_imag is not None:
        A = torch.complex(A, A_imag.to(real))
        B, C = (torch.complex(X[..., :d_state].to(real), X[..., d_state:].to(real)) for X in (B, C))
    y = selective_state_update_naive(ssm_state, x, F.linear(dt, dt_proj_weight), A, B, C, D.to(real), z,
                                     dt_bias=dt_proj_bias.to(real), dt_softplus=True)
    return F.linear(y, out_proj_weight, out_proj_bias), residual
