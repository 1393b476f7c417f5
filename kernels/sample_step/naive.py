"""One position of sampling, in PyTorch: a Gumbel-max draw (or a forced token), its log-probability, bookkeeping."""
from __future__ import annotations

import torch

from ...generation import sample_with_noise


def sample_step_naive(logits: torch.Tensor, uniform: torch.Tensor, forced: torch.Tensor, forced_tokens: torch.Tensor,
                      token: torch.Tensor, codes: torch.Tensor, loglik: torch.Tensor, nonfinite: torch.Tensor,
                      temperature: float = 1.0, top_p: float = 1.0) -> None:
    """logits (n, V) float; uniform (n, V) noise in [0, 1); forced () bool: take forced_tokens (n,) int64 instead of
    the draw. Writes the token to `token` (n,) and `codes` (n,) (e.g. a column of the output), adds its
    log-probability under softmax(logits) (fp64; 0 where forced) to `loglik` (n,) float64, and writes to
    `nonfinite` (n,) bool whether any of the row's logits is NaN or ±inf."""
    nonfinite.copy_(~torch.isfinite(logits).all(-1))
    drawn = sample_with_noise(logits, uniform, temperature, top_p)
    chosen = torch.where(forced, forced_tokens, drawn)
    logp = torch.log_softmax(logits.double(), -1).gather(1, chosen[:, None])[:, 0]
    loglik += torch.where(forced, 0.0, logp)
    codes.copy_(chosen)
    token.copy_(chosen)
