"""Recurrent inference: the per-layer cache and sampling."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class InferenceCache:
    """Per-layer recurrent state. states[layer_idx] = (conv_state (b, E, W), ssm_state (b, E, N)).

    seqlen_offset counts the tokens already consumed. A forward of several tokens runs the parallel path from the
    cached states (a prefill at offset 0, or the next chunk of a long sequence); a single token after the first
    goes through the recurrent step."""
    batch_size: int
    states: dict = field(default_factory=dict)
    seqlen_offset: int = 0


def sample_next_token(logits: torch.Tensor, previous: torch.Tensor | None = None, temperature: float = 1.0,
                      top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0,
                      allowed_token_ids: list[int] | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token per row. logits: (b, V) float; previous: (b, T) ids already in the sequence (for the
    repetition penalty). temperature 0 (or top_k 1) is greedy. Returns (b,) int64.

    Order: tokens outside `allowed_token_ids` (if given) removed; repetition penalty (CTRL: positive logits of
    seen tokens divided by the penalty, negative ones multiplied); temperature; then the top-k, top-p (smallest
    set with cumulative probability ≥ top_p) and min-p (drop tokens below min_p × the top probability) filters."""
    logits = logits.float().clone()
    if allowed_token_ids is not None:
        keep = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
        keep[torch.as_tensor(allowed_token_ids, device=logits.device)] = True
        logits = logits.masked_fill(~keep, float("-inf"))
    if repetition_penalty != 1.0 and previous is not None:
        seen = torch.gather(logits, 1, previous)
        logits.scatter_(1, previous, torch.where(seen > 0, seen / repetition_penalty, seen * repetition_penalty))
    if temperature == 0 or top_k == 1:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        logits = nucleus_filter(logits, top_p)
    if min_p > 0.0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < min_p * probs.max(-1, keepdim=True).values, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


def nucleus_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """logits (b, V) float → the same with every token outside the smallest set of cumulative probability ≥ top_p
    (the most likely first) set to −inf."""
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    sorted_probs = sorted_logits.softmax(-1)
    drop_sorted = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # keep up to and including the crossing token
    return logits.masked_fill(torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted), float("-inf"))


def sample_with_noise(logits: torch.Tensor, uniform: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0
                      ) -> torch.Tensor:
    """One token per row drawn from softmax(logits / temperature) (after the top-p filter) by the Gumbel-max trick:
    argmax(logits / T − log(−log u)) with uniform (b, V) noise in [0, 1) given by the caller. No host sync and no
    random generator inside, so a CUDA graph can capture it and the draw is fixed by the noise. logits (b, V);
    temperature 0 is greedy. Returns (b,) int64."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_p < 1.0:
        logits = nucleus_filter(logits, top_p)
    return (logits - torch.log(-torch.log(uniform))).argmax(-1)


@torch.inference_mode()
def generate(model, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0, seed: int | None = None,
             eos_token_id: int | None = None, allowed_token_ids: list[int] | None = None) -> torch.Tensor:
    """Autoregressive sampling from a causal LM with a recurrent cache.

    input_ids: (b, T) int64 prompt (T ≥ 1). The prompt is consumed by one parallel forward (prefill); each new
    token then costs one recurrent step, O(1) in the sequence length. `allowed_token_ids` restricts sampling
    (e.g. to the four bases). Returns (b, T + max_new_tokens) ids
    (rows that produced `eos_token_id` are padded with it from there on)."""
    if input_ids.dim() != 2 or input_ids.shape[1] < 1:
        raise ValueError(f"generate: input_ids must be (batch, T) with T >= 1, got {tuple(input_ids.shape)}")
    generator = None
    if seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(seed)
    cache = model.allocate_inference_cache(input_ids.shape[0])
    logits = model(input_ids, cache=cache)[:, -1]
    sequence = input_ids
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    for _ in range(max_new_tokens):
        token = sample_next_token(logits, sequence, temperature, top_k, top_p, min_p, repetition_penalty,
                                  allowed_token_ids, generator)
        if eos_token_id is not None:
            token = torch.where(finished, torch.full_like(token, eos_token_id), token)
            finished |= token == eos_token_id
        sequence = torch.cat([sequence, token[:, None]], dim=1)
        if eos_token_id is not None and bool(finished.all()):
            remaining = input_ids.shape[1] + max_new_tokens - sequence.shape[1]
            return torch.cat([sequence, sequence.new_full((sequence.shape[0], remaining), eos_token_id)], dim=1)
        logits = model(token[:, None], cache=cache)[:, -1]
    return sequence
