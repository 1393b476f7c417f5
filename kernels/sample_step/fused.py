"""One position of sampling in one Triton kernel: a program per row reads the logits and the noise once and writes
the token (Gumbel-max draw or forced), its log-probability, whether its logits are finite, and the bookkeeping.
Top-p needs a sort: the PyTorch step."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..host import next_power_of_2
from .naive import sample_step_naive


@triton.jit
def _sample_step_kernel(logits_ptr, uniform_ptr, forced_ptr, forced_tokens_ptr, token_ptr, codes_ptr, loglik_ptr,
                        nonfinite_ptr, vocab, codes_stride, nonfinite_stride, temperature, GREEDY: tl.constexpr,
                        BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_V)
    mask = offs < vocab
    logits = tl.load(logits_ptr + row * vocab + offs, mask=mask, other=-float("inf")).to(tl.float32)
    bad = mask & ((logits != logits) | (tl.abs(logits) == float("inf")))
    tl.store(nonfinite_ptr + row * nonfinite_stride, (tl.max(bad.to(tl.int32), axis=0) > 0).to(tl.int8))
    if GREEDY:
        score = logits
    else:
        uniform = tl.load(uniform_ptr + row * vocab + offs, mask=mask, other=0.5)
        score = logits / temperature - tl.log(-tl.log(uniform))
    score = tl.where(mask, score, -float("inf"))
    drawn = tl.argmax(score, axis=0)
    forced = tl.load(forced_ptr) != 0
    chosen = tl.where(forced, tl.load(forced_tokens_ptr + row), drawn.to(tl.int64))
    # log softmax at the chosen token, in fp64 as the PyTorch step computes it
    wide = logits.to(tl.float64)
    top = tl.max(wide, axis=0)
    log_norm = top + tl.log(tl.sum(tl.where(mask, tl.exp(wide - top), 0.0), axis=0))
    picked = tl.sum(tl.where(offs == chosen, wide, 0.0), axis=0)
    if not forced:
        tl.store(loglik_ptr + row, tl.load(loglik_ptr + row) + (picked - log_norm))
    tl.store(codes_ptr + row * codes_stride, chosen)
    tl.store(token_ptr + row, chosen)


def sample_step_fused(logits, uniform, forced, forced_tokens, token, codes, loglik, nonfinite, temperature=1.0,
                      top_p=1.0):
    """Same contract as `sample_step_naive`."""
    n, vocab = logits.shape
    if top_p < 1.0 or not (logits.is_contiguous() and uniform.is_contiguous() and loglik.dtype == torch.float64
                           and nonfinite.dtype == torch.bool):
        return sample_step_naive(logits, uniform, forced, forced_tokens, token, codes, loglik, nonfinite, temperature,
                                 top_p)
    _sample_step_kernel[(n,)](logits, uniform, forced, forced_tokens, token, codes, loglik, nonfinite, vocab,
                              codes.stride(0), nonfinite.stride(0), float(temperature) if temperature > 0 else 1.0,
                              GREEDY=temperature == 0, BLOCK_V=next_power_of_2(vocab))
