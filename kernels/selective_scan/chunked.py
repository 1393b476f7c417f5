"""The CPU / fallback selective scan in plain PyTorch: chunked over L, no Python loop over tokens.

The sequence is cut into segments of at most T tokens (`chunk_size`) that run one after another, carrying the
state h, so working memory is O(batch·dim·N·T), never O(L·N). Inside a segment the linear recurrence
h_t = a_t ⊙ h_{t−1} + x_t (a_t = exp(Δ_t·A), x_t = Δ_t·u_t·B_t) is solved for all t at once, in one of two ways:

* cumulative sums (fast): with S_t = Σ_{s≤t} Δ_s·A and a reference m = S_T / 2,
      h_t = exp(S_t − m) ⊙ (exp(m) ⊙ h_0 + Σ_{s≤t} exp(m − S_s) ⊙ x_s).
  Every exponent is bounded by the segment's decay range R = max over channels of Σ_t |Δ_t|·max_n |Re A|,
  so this form is used only when R ≤ 2·MAX_EXPONENT (no overflow in fp32). A chunk with steeper decays is
  halved until its pieces qualify. Forward and backward are written out by hand, with in-place ops;
* below MIN_SPLIT tokens, a log-depth (Hillis–Steele) scan on the pairs (a, x), composed as
  (a1, x1) then (a2, x2) = (a2·a1, a2·x1 + x2): only products of decays |a| ≤ 1 and sums appear, so it is
  stable for any Δ·|A| (differentiated by autograd; only needed for Δ·|A| ≳ 15 per step).

The forward keeps only the state at each segment start (O(batch·dim·N·L/T)); the backward walks the segments
from last to first, recomputes each one from its start state, and passes ∂L/∂h_start back to the previous one.
Gradients reach every input, the initial state included, and flow in through the returned last state.
Gradients of complex tensors follow PyTorch's convention (conjugate Wirtinger), as autograd on the naive loop.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .common import exp_fast, readout, run_scan

DEFAULT_CHUNK = 64
MIN_SPLIT = 8
MAX_EXPONENT = 60.0  # exp(60) ≈ 1e26: leaves fp32 room for |x| up to 1e12


def _time_slice(X: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """The [start, end) part of a tensor whose last axis is time (or X itself if it is constant in time)."""
    return X if X.shape[-1] == 1 else X[..., start:end]


def _segment(u, dlt, A, B, C, start: int, end: int) -> tuple:
    """The inputs of the tokens [start, end): (u, Δ, A, B, C) in the grouped layout."""
    return u[..., start:end], dlt[..., start:end], A, _time_slice(B, start, end), _time_slice(C, start, end)


def plan_segments(dlt: torch.Tensor, A: torch.Tensor, chunk: int) -> list[tuple[int, int, bool]]:
    """Cut [0, L) into (start, end, use_cumsum) segments: chunks of `chunk` tokens, halved while their decay range
    is too large for the cumulative-sum form and longer than MIN_SPLIT. dlt: (batch, G, dim/G, L); A: (G, dim/G, N)."""
    total = F.pad(dlt.abs().cumsum(-1), (1, 0))                # (batch, G, dim/G, L + 1)
    rate = A.real.abs().amax(-1)                               # (G, dim/G)

    def split(s: int, e: int):
        fits = bool(((total[..., e] - total[..., s]) * rate).amax() <= 2 * MAX_EXPONENT)
        if fits or e - s <= MIN_SPLIT:
            return [(s, e, fits)]
        half = (s + e) // 2
        return split(s, half) + split(half, e)

    length = dlt.shape[-1]
    return [seg for s in range(0, length, chunk) for seg in split(s, min(s + chunk, length))]


def _relative_decays(dlt, A):
    """exp(S_t − m), exp(m − S_t) (batch, G, dim/G, N, T) and exp(m) (batch, G, dim/G, N, 1), where
    S_t = A·Σ_{s≤t} Δ_s (A is constant over the segment, so one cumulative sum over (batch, G, dim/G, T) does)
    and m = S_T / 2."""
    tau = dlt.cumsum(-1)
    half = tau[..., -1:] / 2
    exp_neg = exp_fast(A[..., None] * (half - tau)[..., None, :])
    return torch.reciprocal(exp_neg), exp_neg, exp_fast(A[..., None] * half[..., None, :])


def _cumsum_forward(u, dlt, A, B, C, h0):
    """The cumulative-sum form (no autograd). Shapes as `log_depth_scan`. Returns y (batch, G, dim/G, T), h_T."""
    exp_pos, exp_neg, exp_m = _relative_decays(dlt, A)
    h = exp_neg.mul_(B).mul_((dlt * u)[..., None, :])          # exp(m − S_s)·x_s
    h = h.cumsum_(-1).add_(exp_m * h0[..., None]).mul_(exp_pos)
    return readout(h, C), h[..., -1].clone()


def _reverse_cumsum(v: torch.Tensor) -> torch.Tensor:
    return v.flip(-1).cumsum_(-1).flip(-1)


def _cumsum_backward(u, dlt, A, B, C, h0, dy, dh):
    """Gradients of `_cumsum_forward` for output grads dy (batch, G, dim/G, T) and dh (batch, G, dim/G, N).

    With the adjoint μ_t = Σ_{s≥t} conj(exp(S_s − S_t))·∂L/∂h_s (a reverse scan, done with the same reference m):
    ∂x_t = μ_t, ∂(Δ_t·A) = conj(a_t·h_{t−1})·μ_t, ∂h0 = conj(a_0)·μ_0, ∂C_t = conj(h_t)·∂y_t (summed over the
    channels sharing C). a_t·h_{t−1} is taken as exp(S_t − m)·W_{t−1} from the running sum W_t = exp(−S_t + m)·h_t,
    never as h_t − x_t, which cancels catastrophically when a_t is small. For complex A, y = 2·Re(Σ C·h), hence the
    factor 2. Returns (du, ddlt, dA, dB, dC, dh0)."""
    dtu = dlt * u                                               # (batch, G, dim/G, T)
    exp_pos, exp_neg, exp_m = _relative_decays(dlt, A)
    start = exp_m * h0[..., None]                               # W_{−1}: (batch, G, dim/G, N, 1)
    W = (exp_neg * B).mul_(dtu[..., None, :]).cumsum_(-1).add_(start)
    h = W * exp_pos                                             # (batch, G, dim/G, N, T)
    decayed_prev = torch.cat([start, W[..., :-1]], dim=-1).mul_(exp_pos)  # a_t·h_{t−1}
    gy = 2 * dy if A.is_complex() else dy                       # (batch, G, dim/G, T), real
    gh = C.conj() * gy[..., None, :]                            # ∂L/∂h_t, direct part
    gh[..., -1] += dh
    mu = _reverse_cumsum(gh.mul_(exp_pos.conj())).mul_(exp_neg.conj())
    dC = (h.conj() * gy[..., None, :]).sum_to_size(C.shape)
    dB = (mu * dtu[..., None, :]).sum_to_size(B.shape)
    d_dtu = (mu * B.conj()).sum(-2).real if mu.is_complex() else (mu * B).sum(-2)
    dh0 = exp_fast(dlt[..., None, 0] * A).conj() * mu[..., 0]
    dP = mu.mul_(decayed_prev.conj())                           # ∂(Δ_t·A), (batch, G, dim/G, N, T)
    dA = (dP * dlt[..., None, :]).sum((0, -1))
    d_dlt = (A.conj()[..., None, :] @ dP)[..., 0, :]            # Σ_n conj(A_n)·dP_n: (batch, G, dim/G, T)
    d_dlt = d_dlt.real if d_dlt.is_complex() else d_dlt
    return d_dtu * dlt, d_dtu * u + d_dlt, dA, dB, dC, dh0


def _shift_right(x: torch.Tensor, k: int, fill: float) -> torch.Tensor:
    """x shifted by k along the last axis, the first k positions set to `fill` (real or complex x)."""
    if x.is_complex():
        return torch.complex(_shift_right(x.real, k, fill), _shift_right(x.imag, k, 0.0))
    return F.pad(x[..., :-k], (k, 0), value=fill)


def log_depth_scan(u, dlt, A, B, C, h0):
    """One segment by the Hillis–Steele scan, differentiable, in the grouped layout of `common`.

    u, dlt: (batch, G, dim/G, T); A: (G, dim/G, N); B, C: (batch, G, 1, N, T) or (1, G, dim/G, N, 1);
    h0: (batch, G, dim/G, N). Returns y (batch, G, dim/G, T) and h_T (batch, G, dim/G, N).
    """
    a = exp_fast(dlt[..., None, :] * A[..., None])             # (batch, G, dim/G, N, T), |a| <= 1
    x = (dlt * u)[..., None, :] * B
    step = 1
    while step < a.shape[-1]:
        x = x + a * _shift_right(x, step, 0.0)
        a = a * _shift_right(a, step, 1.0)
        step *= 2
    h = x + a * h0[..., None]                                   # a now holds the decay from the segment start
    return readout(h, C), h[..., -1]


class _ChunkedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, dlt, A, B, C, h0, chunk: int):
        segments = plan_segments(dlt, A, chunk)
        y = torch.empty_like(u)
        h, starts = h0, []
        for s, e, fits in segments:
            starts.append(h)
            args = _segment(u, dlt, A, B, C, s, e) + (h,)
            y[..., s:e], h = _cumsum_forward(*args) if fits else log_depth_scan(*args)
        ctx.save_for_backward(u, dlt, A, B, C, torch.stack(starts))
        ctx.segments = segments
        return y, h

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh):
        u, dlt, A, B, C, starts = ctx.saved_tensors
        dy = dy.contiguous()  # often a transposed view; every segment reads a dense block of it
        du, ddlt = torch.zeros_like(u), torch.zeros_like(dlt)
        dA, dB, dC = torch.zeros_like(A), torch.zeros_like(B), torch.zeros_like(C)
        for i in reversed(range(len(ctx.segments))):
            s, e, fits = ctx.segments[i]
            args = _segment(u, dlt, A, B, C, s, e) + (starts[i],)
            if fits:
                grads = _cumsum_backward(*args, dy[..., s:e], dh)
            else:
                with torch.enable_grad():
                    inputs = [X.detach().requires_grad_() for X in args]
                    grads = torch.autograd.grad(log_depth_scan(*inputs), inputs, (dy[..., s:e], dh))
            g_u, g_dlt, g_A, g_B, g_C, dh = grads
            du[..., s:e] = g_u
            ddlt[..., s:e] = g_dlt
            dA += g_A
            for full, part in ((dB, g_B), (dC, g_C)):
                if full.shape[-1] == 1:
                    full += part
                else:
                    full[..., s:e] = part
        need = ctx.needs_input_grad
        return tuple(g if n else None for g, n in zip((du, ddlt, dA, dB, dC, dh), need)) + (None,)


def selective_scan_chunked(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           initial_state=None, return_last_state=False, chunk_size: int = DEFAULT_CHUNK):
    """Chunked PyTorch selective scan; same signature and semantics as `selective_scan`, plus `chunk_size`."""
    return run_scan(lambda *grouped: _ChunkedScan.apply(*grouped, chunk_size), u, delta, A, B, C, D, z, delta_bias,
                    delta_softplus, initial_state, return_last_state)
