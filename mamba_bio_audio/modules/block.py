from __future__ import annotations

import torch
from torch import nn

from ..kernels import add_rmsnorm
from .norm import RMSNorm


class Block(nn.Module):
    """Pre-norm residual block: residual ← hidden + residual; hidden ← mixer(RMSNorm(residual)).

    Returning (hidden, residual) separately lets the next block fuse the add with its norm (`add_rmsnorm`, one
    Triton kernel on the GPU), and keeps the residual stream in fp32 (`residual_in_fp32`) whatever the compute
    dtype."""

    def __init__(self, dim: int, mixer: nn.Module, norm_eps: float = 1e-5, residual_in_fp32: bool = True):
        super().__init__()
        self.mixer = mixer
        self.norm = RMSNorm(dim, eps=norm_eps)
        self.residual_in_fp32 = residual_in_fp32

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor | None = None, cache=None):
        """hidden, residual: (b, L, d) -> (hidden, residual), both (b, L, d); residual fp32 if asked."""
        hidden, residual = add_rmsnorm(hidden, residual, self.norm.weight, self.norm.eps, self.residual_in_fp32)
        return self.mixer(hidden, cache=cache), residual
