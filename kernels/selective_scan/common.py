"""Shape checks and the elementwise parts of the selective scan shared by every implementation.

Every implementation reduces the call to one core recurrence on a *grouped* layout, so that grouped, shared and
constant B/C are the same case and never get copied per channel:

    u, delta:   (batch, G, dim/G, L)
    A:          (G, dim/G, N)
    B, C:       (batch, G, 1, N, L)   variable (G = 1 for the plain (batch, N, L) form)
                (1, G, dim/G, N, 1)   constant (dim, N)
    state h:    (batch, G, dim/G, N)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float32 for fp32/fp16/bf16 inputs (the state and all accumulation are fp32), float64 if any input is fp64."""
    real = [t.real.dtype if t.is_complex() else t.dtype for t in tensors if t is not None]
    return torch.float64 if torch.float64 in real else torch.float32


def check_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state) -> int:
    """Validate shapes; return the number of groups G. Raises ValueError naming the argument and the shapes."""
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, dim, L), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan: delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"selective_scan: z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective_scan: A must be (dim={dim}, N), got {tuple(A.shape)}")
    n_state = A.shape[1]
    groups = set()
    for name, X in (("B", B), ("C", C)):
        if X.dim() == 2:
            ok = X.shape == (dim, n_state)
        elif X.dim() == 3:
            ok = X.shape == (batch, n_state, length)
            groups.add(1)
        elif X.dim() == 4:
            ok = X.shape == (batch, X.shape[1], n_state, length) and X.shape[1] > 0 and dim % X.shape[1] == 0
            groups.add(X.shape[1])
        else:
            ok = False
        if not ok:
            raise ValueError(
                f"selective_scan: {name} must be (batch={batch}, N={n_state}, L={length}), grouped (batch, G, N, L) "
                f"with G dividing dim={dim}, or constant (dim, N); got {tuple(X.shape)}")
        if X.is_complex() and not A.is_complex():
            raise ValueError(f"selective_scan: {name} is complex but A is real; complex B/C need a complex A")
    if len(groups) > 1:
        raise ValueError(f"selective_scan: B and C use different group counts {sorted(groups)}")
    for name, X in (("D", D), ("delta_bias", delta_bias)):
        if X is not None and X.shape != (dim,):
            raise ValueError(f"selective_scan: {name} must be (dim={dim},), got {tuple(X.shape)}")
    if initial_state is not None and initial_state.shape != (batch, dim, n_state):
        raise ValueError(f"selective_scan: initial_state must be (batch={batch}, dim={dim}, N={n_state}), "
                         f"got {tuple(initial_state.shape)}")
    return groups.pop() if groups else 1


def discretize_delta(delta: torch.Tensor, delta_bias: torch.Tensor | None, softplus: bool,
                     dtype: torch.dtype) -> torch.Tensor:
    """Δ = delta + delta_bias, then softplus if asked (identity above 20, as torch's softplus), in `dtype`."""
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    return F.softplus(delta) if softplus else delta


def exp_fast(z: torch.Tensor) -> torch.Tensor:
    """exp, with complex inputs through polar form (several times faster than torch's complex exp on the CPU)."""
    return torch.polar(torch.exp(z.real), z.imag) if z.is_complex() else torch.exp(z)


def gate_output(y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None) -> torch.Tensor:
    """out = (y + D·u)·silu(z), in y's (compute) dtype. y, u, z: (batch, dim, L); D: (dim,)."""
    if D is not None:
        y = y + D.to(y.dtype)[:, None] * u.to(y.dtype)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def to_grouped(u, delta, A, B, C, initial_state, groups: int, dtype: torch.dtype):
    """Views of the inputs in the grouped layout of this module's docstring, cast to the compute dtype
    (complex for A, B, C and the state when A is complex)."""
    batch, dim, length = u.shape
    n_state = A.shape[1]
    per_group = dim // groups
    cdtype = (torch.complex128 if dtype == torch.float64 else torch.complex64) if A.is_complex() else dtype

    def bc(X):
        X = X.to(cdtype).contiguous()
        if X.dim() == 2:  # constant (dim, N)
            return X.reshape(1, groups, per_group, n_state, 1)
        return X.reshape(batch, groups, 1, n_state, length)

    # contiguous along L: every chunk then reads and writes dense blocks
    ug = u.to(dtype).contiguous().reshape(batch, groups, per_group, length)
    dg = delta.contiguous().reshape(batch, groups, per_group, length)
    Ag = A.to(cdtype).reshape(groups, per_group, n_state)
    if initial_state is None:
        h0 = torch.zeros(batch, groups, per_group, n_state, dtype=cdtype, device=u.device)
    else:
        h0 = initial_state.to(cdtype).reshape(batch, groups, per_group, n_state)
    return ug, dg, Ag, bc(B), bc(C), h0


def readout(h: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """y = Σ_n C_n h_n over the state axis (-2), or 2·Re of it for a complex state."""
    y = (h * C).sum(-2)
    return 2 * y.real if y.is_complex() else y


def run_scan(core, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_last_state):
    """The frame every implementation shares: checks, Δ, the grouped layout, then `core` for the recurrence, then
    the D skip and the z gate.

    core(u, Δ, A, B, C, h0) -> (y, h_L) works in the grouped layout (module docstring); y is real (2·Re already
    taken for complex A). Returns out (batch, dim, L) in u's dtype [, h_L (batch, dim, N)]."""
    groups = check_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    batch, dim, length = u.shape
    dlt = discretize_delta(delta, delta_bias, delta_softplus, dtype)
    y, h_last = core(*to_grouped(u, dlt, A, B, C, initial_state, groups, dtype))
    out = gate_output(y.reshape(batch, dim, length), u, D, z).to(u.dtype)
    return (out, h_last.reshape(batch, dim, -1)) if return_last_state else out
