"""Sample-by-sample generation from a causal AudioUNet, in PyTorch: the definition the persistent kernel is tested
against. Shapes: n = rows (clips), T = length, V = the model's classes."""
from __future__ import annotations

import torch

from ..sample_step import sample_step_naive


@torch.inference_mode()
def unet_generate_naive(model, n: int, length: int, uniform: torch.Tensor, start_token: int,
                        prompt: torch.Tensor | None = None, temperature: float = 1.0, top_p: float = 1.0
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step `model` (an AudioUNet) through `length` positions for n rows from empty states:

        token_0 = start_token
        logits_t = model.step(token_t)                                   (n, V)
        token_{t+1} = prompt[:, t] if t < prompt's length else a Gumbel-max draw from softmax(logits_t / temperature)
                      after the top-p filter, with uniform[t] (n, V) as the noise (`sample_step_naive`)
        loglik += log softmax(logits_t)[token_{t+1}] where drawn (fp64)

    Returns codes (n, length) int64 (codes[:, t] = token_{t+1}), loglik (n,) float64 and every position's logits
    (length, n, V) in the model's dtype."""
    state = model.allocate_step_state(n)
    device = next(model.parameters()).device
    token = torch.full((n,), start_token, dtype=torch.int64, device=device)
    prompt_len = 0 if prompt is None else prompt.shape[1]
    codes = torch.empty(n, length, dtype=torch.int64, device=device)
    loglik = torch.zeros(n, dtype=torch.float64, device=device)
    nonfinite = torch.empty(n, dtype=torch.bool, device=device)  # the draw's flags; the logits are returned instead
    logits_seen = []
    for t in range(length):
        logits = model.step(token, state)
        logits_seen.append(logits)
        forced = torch.tensor(t < prompt_len, device=device)
        forced_tokens = prompt[:, t].to(device) if t < prompt_len else token
        sample_step_naive(logits, uniform[t].to(device), forced, forced_tokens, token, codes[:, t], loglik,
                          nonfinite, temperature, top_p)
    return codes, loglik, torch.stack(logits_seen)
