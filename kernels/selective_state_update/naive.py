"""One decoding step of the selective scan in PyTorch: the definition, and the CPU path."""
from __future__ import annotations

import torch

from ..selective_scan.common import discretize_delta, gate_output, readout


def selective_state_update_naive(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                                 state_batch_indices=None):
    """Advance `state` by one token in place and return that token's output.

    state: (batch, dim, N) fp32 (complex64 for complex A), updated in place; x, dt, z: (batch, dim);
    A: (dim, N); B, C: (batch, N) or grouped (batch, G, N); D, dt_bias: (dim,).
    state_batch_indices: optional (batch,) int64; row i of the inputs then uses state[state_batch_indices[i]] of a
    larger cache state (cache_size, dim, N), and only those rows change.
    h = exp(Δ·A) ⊙ h + Δ·B·x;  y = Σ_n C_n h_n (2·Re for complex);  out = (y + D·x)·silu(z).
    Returns out (batch, dim) in x's dtype.
    """
    if state_batch_indices is not None:
        rows = state[state_batch_indices]
        out = selective_state_update_naive(rows, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
        state[state_batch_indices] = rows
        return out
    batch, dim, n_state = state.shape
    if x.shape != (batch, dim) or dt.shape != (batch, dim) or A.shape != (dim, n_state):
        raise ValueError(f"selective_state_update: expected state (batch, dim, N), x and dt (batch, dim), "
                         f"A (dim, N); got state {tuple(state.shape)}, x {tuple(x.shape)}, dt {tuple(dt.shape)}, "
                         f"A {tuple(A.shape)}")
    dtype = state.real.dtype if state.is_complex() else state.dtype
    delta = discretize_delta(dt[..., None], dt_bias, dt_softplus, dtype)  # (batch, dim, 1)

    def per_channel(X):  # (batch, N) or (batch, G, N) -> (batch, 1 | dim, N)
        X = X.to(state.dtype if X.is_complex() else dtype)
        return X[:, None] if X.dim() == 2 else X.repeat_interleave(dim // X.shape[1], dim=1)

    new_state = torch.exp(delta * A.to(state.dtype)) * state + delta * x[..., None].to(dtype) * per_channel(B)
    state.copy_(new_state)
    y = readout(new_state[..., None], per_channel(C)[..., None])  # (batch, dim, 1)
    out = gate_output(y, x[..., None], D, None if z is None else z[..., None])
    return out[..., 0].to(x.dtype)
