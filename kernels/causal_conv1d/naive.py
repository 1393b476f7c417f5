"""Causal depthwise conv1d in PyTorch as W shifted multiply-adds (much faster than a depthwise nn.Conv1d
backward on the CPU)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d_naive(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                        activation: str | None = None) -> torch.Tensor:
    """out[b, c, t] = Σ_k weight[c, k] · x[b, c, t − (W−1) + k] (+ bias[c]), zero before t = 0; then silu if asked.

    x: (batch, channels, L); weight: (channels, W); bias: (channels,). Returns (batch, channels, L) in x's dtype.
    """
    if activation not in (None, "silu"):
        raise ValueError(f"causal_conv1d: activation must be None or 'silu', got {activation!r}")
    channels, width = weight.shape
    if x.dim() != 3 or x.shape[1] != channels:
        raise ValueError(f"causal_conv1d: x must be (batch, {channels}, L), got {tuple(x.shape)}")
    length = x.shape[-1]
    padded = F.pad(x, (width - 1, 0))
    w = weight.to(x.dtype)
    out = padded[..., :length] * w[:, 0, None]
    for k in range(1, width):
        out = out + padded[..., k:k + length] * w[:, k, None]
    if bias is not None:
        out = out + bias.to(x.dtype)[:, None]
    return F.silu(out) if activation == "silu" else out


def causal_conv1d_update_naive(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                               bias: torch.Tensor | None = None, activation: str | None = None) -> torch.Tensor:
    """One step: shift x (batch, channels) into conv_state (batch, channels, W) in place, return the conv output
    (batch, channels) for that position (silu if asked)."""
    conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
    conv_state[..., -1] = x
    out = (conv_state * weight.to(conv_state.dtype)).sum(-1)
    if bias is not None:
        out = out + bias.to(out.dtype)
    out = out.to(x.dtype)
    return F.silu(out) if activation == "silu" else out
