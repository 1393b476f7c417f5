"""The CPU / fallback selective scan in plain PyTorch: chunked over L, no Python loop over tokens.

The sequence is cut into chunks of T tokens that run one after another, carrying h, so working memory is
O(batch·dim·N·T), never O(L·N). Inside a chunk the linear recurrence h_t = a_t ⊙ h_{t−1} + x_t (a_t = exp(Δ_t·A),
x_t = Δ_t·u_t·B_t) is solved for all t at once, in one of two ways:

* cumulative sums (fast, used when it is safe): with S_t = Σ_{s≤t} Δ_s·A and a reference m = S_T / 2,
      h_t = exp(S_t − m) ⊙ (exp(m) ⊙ h_0 + Σ_{s≤t} exp(m − S_s) ⊙ x_s).
  Every exponent stays within half the chunk's decay range R = max Σ_t |Δ_t|·|Re A|, so it is used only when
  R ≤ 2·MAX_EXPONENT (no overflow in fp32); a chunk with steeper decays is halved and retried;
* below MIN_SPLIT tokens, a log-depth (Hillis–Steele) scan on the pairs (a, x), composed as (a1, x1) then (a2, x2) = (a2·a1, a2·x1 + x2):
  only products of decays and sums appear, stable for any Δ·|A|. Slower (log2 T passes).

The backward is a custom autograd.Function: the forward keeps only the state at each chunk start
(O(batch·dim·N·L/T)); the backward walks the chunks from last to first, recomputes each chunk with autograd from
its start state and passes ∂L/∂h_start back to the previous chunk. Gradients reach every input, the initial state
included, and flow in through the returned last state.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .common import check_inputs, compute_dtype, discretize_delta, gate_output, readout, to_grouped

DEFAULT_CHUNK = 64
MIN_SPLIT = 8
MAX_EXPONENT = 60.0  # exp(60) ≈ 1e26: leaves fp32 room for |x| up to 1e12


def _shift_right(x: torch.Tensor, k: int, fill: float) -> torch.Tensor:
    """x shifted by k along the last axis, the first k positions set to `fill` (real or complex x)."""
    if x.is_complex():
        return torch.complex(_shift_right(x.real, k, fill), _shift_right(x.imag, k, 0.0))
    return F.pad(x[..., :-k], (k, 0), value=fill)


def scan_chunk(u, dlt, A, B, C, h0):
    """One chunk of the recurrence, differentiable, in the grouped layout of `common`.

    u, dlt: (batch, G, dim/G, T); A: (G, dim/G, N); B, C: (batch, G, 1, N, T) or (1, G, dim/G, N, 1);
    h0: (batch, G, dim/G, N). Returns y (batch, G, dim/G, T) and h_T (batch, G, dim/G, N).
    """
    length = u.shape[-1]
    decay_range = (dlt.abs().sum(-1, keepdim=True) * A.real.abs()).amax()
    if decay_range > 2 * MAX_EXPONENT and length > MIN_SPLIT:  # too steep for one cumulative sum: halve
        half = length // 2
        y1, h1 = scan_chunk(u[..., :half], dlt[..., :half], A, _time_slice(B, 0, half), _time_slice(C, 0, half), h0)
        y2, h2 = scan_chunk(u[..., half:], dlt[..., half:], A, _time_slice(B, half, length),
                            _time_slice(C, half, length), h1)
        return torch.cat([y1, y2], dim=-1), h2
    dA = dlt[..., None, :] * A[..., None]          # (batch, G, dim/G, N, T)
    x = (dlt * u)[..., None, :] * B                # (batch, G, dim/G, N, T)
    if decay_range <= 2 * MAX_EXPONENT:
        S = torch.cumsum(dA, dim=-1)
        m = S[..., -1:] / 2
        h = torch.exp(S - m) * (torch.exp(m) * h0[..., None] + torch.cumsum(torch.exp(m - S) * x, dim=-1))
    else:
        h = _log_depth_scan(torch.exp(dA), x, h0)
    return readout(h, C), h[..., -1]


def _log_depth_scan(a, x, h0):
    """h_t = a_t ⊙ h_{t−1} + x_t along the last axis for all t, h_{−1} = h0, in log2(T) passes."""
    step = 1
    while step < a.shape[-1]:
        x = x + a * _shift_right(x, step, 0.0)
        a = a * _shift_right(a, step, 1.0)
        step *= 2
    return x + a * h0[..., None]                   # a now holds the decay from the chunk start


def _time_slice(X: torch.Tensor, start: int, end: int) -> torch.Tensor:
    return X if X.shape[-1] == 1 else X[..., start:end]


class _ChunkedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, dlt, A, B, C, h0, chunk: int):
        length = u.shape[-1]
        y = torch.empty_like(u)
        h = h0
        starts = []
        for s in range(0, length, chunk):
            e = min(s + chunk, length)
            starts.append(h)
            y[..., s:e], h = scan_chunk(u[..., s:e], dlt[..., s:e], A,
                                        _time_slice(B, s, e), _time_slice(C, s, e), h)
        ctx.save_for_backward(u, dlt, A, B, C, torch.stack(starts))
        ctx.chunk = chunk
        return y, h

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh):
        u, dlt, A, B, C, starts = ctx.saved_tensors
        chunk, length = ctx.chunk, u.shape[-1]
        need = ctx.needs_input_grad
        du, ddlt = torch.zeros_like(u), torch.zeros_like(dlt)
        dA, dB, dC = torch.zeros_like(A), torch.zeros_like(B), torch.zeros_like(C)
        for i in reversed(range(starts.shape[0])):
            s, e = i * chunk, min((i + 1) * chunk, length)
            with torch.enable_grad():
                inputs = [X.detach().requires_grad_() for X in
                          (u[..., s:e], dlt[..., s:e], A, _time_slice(B, s, e), _time_slice(C, s, e), starts[i])]
                y_c, h_c = scan_chunk(*inputs)
                g_u, g_dlt, g_A, g_B, g_C, dh = torch.autograd.grad((y_c, h_c), inputs, (dy[..., s:e], dh))
            du[..., s:e] = g_u
            ddlt[..., s:e] = g_dlt
            dA += g_A
            for full, part in ((dB, g_B), (dC, g_C)):
                if full.shape[-1] == 1:
                    full += part
                else:
                    full[..., s:e] = part
        return (du if need[0] else None, ddlt if need[1] else None, dA if need[2] else None,
                dB if need[3] else None, dC if need[4] else None, dh if need[5] else None, None)


def selective_scan_chunked(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           initial_state=None, return_last_state=False, chunk_size: int = DEFAULT_CHUNK):
    """Chunked PyTorch selective scan; same signature and semantics as `selective_scan`, plus `chunk_size`."""
    groups = check_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    batch, dim, length = u.shape
    dlt = discretize_delta(delta, delta_bias, delta_softplus, dtype)
    ug, dg, Ag, Bg, Cg, h0 = to_grouped(u, dlt, A, B, C, initial_state, groups, dtype)
    y, h_last = _ChunkedScan.apply(ug, dg, Ag, Bg, Cg, h0, chunk_size)
    out = gate_output(y.reshape(batch, dim, length), u, D, z).to(u.dtype)
    return (out, h_last.reshape(batch, dim, -1)) if return_last_state else out
