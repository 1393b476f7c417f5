"""Residual add + RMSNorm (pre-norm) in PyTorch: the definition, and the CPU path."""
from __future__ import annotations

import torch


def add_rmsnorm_naive(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float = 1e-5,
                      residual_in_fp32: bool = True):
    """residual_out = x + residual (or x), kept in fp32 if `residual_in_fp32` (fp64 stays fp64);
    y = residual_out / sqrt(mean over the last axis of residual_out² + eps) · weight, computed in fp32 (fp64 for fp64
    inputs), returned in x's dtype.

    x, residual: (..., dim); weight: (dim,). Returns (y, residual_out)."""
    residual_out = x if residual is None else x + residual
    if residual_in_fp32 and residual_out.dtype != torch.float64:
        residual_out = residual_out.float()
    wide = torch.float64 if residual_out.dtype == torch.float64 else torch.float32
    s = residual_out.to(wide)
    y = s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + eps) * weight.to(wide)
    return y.to(x.dtype), residual_out
