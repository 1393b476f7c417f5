"""The executable definition of the selective scan: one token at a time. For tests only (slow)."""
from __future__ import annotations

import torch

from .common import check_inputs, compute_dtype, discretize_delta, gate_output, readout, to_grouped


def selective_scan_naive(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         initial_state=None, return_last_state=False):
    """Token-by-token selective scan; same signature and semantics as `selective_scan`.

    h_t = exp(Δ_t·A) ⊙ h_{t−1} + Δ_t·B_t·u_t,  y_t = Σ_n C_t,n h_t,n (2·Re(...) for complex A),
    out = (y + D·u)·silu(z). Returns out (batch, dim, L) in u's dtype [, h_L (batch, dim, N) fp32/complex64].
    """
    groups = check_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    batch, dim, length = u.shape
    dlt = discretize_delta(delta, delta_bias, delta_softplus, dtype)
    ug, dg, Ag, Bg, Cg, h = to_grouped(u, dlt, A, B, C, initial_state, groups, dtype)
    ys = []
    for t in range(length):
        Bt = Bg[..., t if Bg.shape[-1] > 1 else 0]  # (batch|1, G, 1|dim/G, N)
        Ct = Cg[..., t if Cg.shape[-1] > 1 else 0]
        dt = dg[..., t, None]  # (batch, G, dim/G, 1)
        h = torch.exp(dt * Ag) * h + dt * ug[..., t, None] * Bt
        ys.append(readout(h[..., None], Ct[..., None]))
    y = torch.cat(ys, dim=-1).reshape(batch, dim, length)
    out = gate_output(y, u, D, z).to(u.dtype)
    return (out, h.reshape(batch, dim, -1)) if return_last_state else out
