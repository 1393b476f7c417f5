from __future__ import annotations

import os

import torch
from torch import nn

from ..kernels import add_rmsnorm, mamba_block_step
from .mamba import Mamba
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
        """hidden, residual: (b, L, d) -> (hidden, residual), both (b, L, d); residual fp32 if asked. A single
        recurrent step of a Mamba (real or complex A) on the GPU goes through `mamba_block_step` (the add, the norm
        and the whole mixer step in two Triton kernels, out_proj in them up to d_model 128) unless
        MBA_FUSED_BLOCK_STEP=0."""
        if cache is not None and hidden.shape[1] == 1 and self._fused_step(hidden):
            m = self.mixer
            out, residual = mamba_block_step(
                hidden[:, 0], None if residual is None else residual[:, 0], self.norm.weight, self.norm.eps,
                m.in_proj.weight, m.conv1d.weight[:, 0], m.conv1d.bias, m.x_proj.weight, m.dt_proj.weight,
                m.dt_proj.bias, m.A_log, m.D, m.out_proj.weight, *cache.states[m.layer_idx], m.in_proj.bias,
                m.out_proj.bias, self.residual_in_fp32, m.A_imag if m.complex_ssm else None)
            return out[:, None], residual[:, None]
        hidden, residual = add_rmsnorm(hidden, residual, self.norm.weight, self.norm.eps, self.residual_in_fp32)
        return self.mixer(hidden, cache=cache), residual

    def _fused_step(self, hidden: torch.Tensor) -> bool:
        return hidden.is_cuda and isinstance(self.mixer, Mamba) and os.environ.get("MBA_FUSED_BLOCK_STEP", "1") != "0"
