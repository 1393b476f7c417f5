"""The executable definition of the selective scan: one token at a time. For tests only (slow)."""
from __future__ import annotations

import torch

from .common import readout, run_scan


def _token_loop(u, dlt, A, B, C, h):
    """The recurrence one token at a time, in the grouped layout of `common`."""
    ys = []
    for t in range(u.shape[-1]):
        Bt = B[..., t if B.shape[-1] > 1 else 0]  # (batch|1, G, 1|dim/G, N)
        Ct = C[..., t if C.shape[-1] > 1 else 0]
        dt = dlt[..., t, None]                     # (batch, G, dim/G, 1)
        h = torch.exp(dt * A) * h + dt * u[..., t, None] * Bt
        ys.append(readout(h[..., None], Ct[..., None]))
    return torch.cat(ys, dim=-1), h


def selective_scan_naive(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         initial_state=None, return_last_state=False):
    """Token-by-token selective scan; same signature and semantics as `selective_scan`.

    h_t = exp(Δ_t·A) ⊙ h_{t−1} + Δ_t·B_t·u_t,  y_t = Σ_n C_t,n h_t,n (2·Re(...) for complex A),
    out = (y + D·u)·silu(z). Returns out (batch, dim, L) in u's dtype [, h_L (batch, dim, N) fp32/complex64].
    """
    return run_scan(_token_loop, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                    return_last_state)
