"""Selective scan on the CPU with the recurrence compiled by numba.

Per segment of T tokens, PyTorch computes the decays a_t = exp(Δ_t·A) for all (channel, state, t) at once
(vectorised exp), and a numba kernel runs the recurrence token by token with the state in registers:
h_t = a_t ⊙ h_{t−1} + Δ_t·u_t·B_t, y_t = Σ_n C_t,n·h_t,n — one pass over the decays instead of the ~10 of the
pure-PyTorch form. The backward recomputes each segment's states from the saved segment-start state and runs the
adjoint recurrence μ_t = conj(C_t)·∂y_t + conj(a_{t+1})·μ_{t+1} backwards, accumulating every gradient in the
same pass. Memory: O(batch·dim·N·T) working set plus the segment-start states (O(batch·dim·N·L/T)).

Layouts are those of `common` (grouped), with the state axis N moved last for the kernels. Forward lanes (batch,
group, channel) run in parallel; the backward runs (batch, group) blocks in parallel, so that the gradients of
B and C shared by a group's channels are summed without races.
"""
from __future__ import annotations

import contextlib
import importlib.util

import torch
from torch.autograd.function import once_differentiable

from .common import exp_fast, run_scan

DEFAULT_CHUNK = 64

_kernels = None


def numba_available() -> bool:
    """Whether numba is installed (checked without importing it: importing takes about a second)."""
    return importlib.util.find_spec("numba") is not None


def _compile():
    """Build the numba kernels on first use (numba is imported lazily; compiled code is cached on disk)."""
    global _kernels
    if _kernels is not None:
        return _kernels
    import numba
    import numpy as np
    from numba import prange

    @numba.njit(parallel=True, cache=True)
    def forward(a, dtu, t0, B, C, h, y):
        """a: (b, G, Dg, T, N) decays of the segment starting at token t0; dtu: (b, G, Dg, L) Δ·u;
        B, C: (bB, G, DgB, LB, N) with bB ∈ {1, b}, DgB ∈ {1, Dg}, LB ∈ {1, L}; h: (b, G, Dg, N) state, advanced
        in place; y: (b, G, Dg, L) output, written at [t0, t0 + T) (complex for complex A: the caller takes 2·Re)."""
        nb, ng, nd, nt, nn = a.shape
        for lane in prange(nb * ng * nd):
            lane = np.int64(lane)  # prange indices are unsigned: mixed with signed ints they become floats
            bi, g, d = lane // (ng * nd), lane // nd % ng, lane % nd
            bb, db = min(bi, B.shape[0] - 1), min(d, B.shape[2] - 1)
            bc, dc = min(bi, C.shape[0] - 1), min(d, C.shape[2] - 1)
            for t in range(nt):
                tb = t0 + t if B.shape[3] > 1 else 0
                tc = t0 + t if C.shape[3] > 1 else 0
                x = dtu[bi, g, d, t0 + t]
                acc = C[bc, g, dc, tc, 0] * 0
                for n in range(nn):
                    hn = a[bi, g, d, t, n] * h[bi, g, d, n] + x * B[bb, g, db, tb, n]
                    h[bi, g, d, n] = hn
                    acc += C[bc, g, dc, tc, n] * hn
                y[bi, g, d, t0 + t] = acc

    @numba.njit(parallel=True, cache=True)
    def backward(a, dtu, t0, A, dlt, B, C, h0, gy, lam, d_dtu, d_dlt, dA, dB, dC):
        """Adjoint pass over the segment [t0, t0 + T). a, dtu, B, C as in `forward`; A: (G, Dg, N);
        dlt: (b, G, Dg, L); h0: (b, G, Dg, N) the segment-start state; gy: (b, G, Dg, L) ∂L/∂y (×2 for complex A);
        lam: (b, G, Dg, N) ∂L/∂h at the segment end in, at its start out. Accumulated (+=): d_dtu, d_dlt
        (b, G, Dg, L) (∂(Δ·u) and the Δ·A part of ∂Δ), dA (b, G, Dg, N), dB, dC (b, G, DgB, LB, N), all per batch
        row. Complex values follow PyTorch's conjugate convention."""
        nb, ng, nd, nt, nn = a.shape
        for block in prange(nb * ng):
            block = np.int64(block)
            bi, g = block // ng, block % ng
            hs = np.empty((nt + 1, nn), dtype=a.dtype)  # hs[t + 1] = h_t, hs[0] = segment-start state
            for d in range(nd):
                bb, db = min(bi, B.shape[0] - 1), min(d, B.shape[2] - 1)
                bc, dc = min(bi, C.shape[0] - 1), min(d, C.shape[2] - 1)
                for n in range(nn):
                    hs[0, n] = h0[bi, g, d, n]
                for t in range(nt):
                    tb = t0 + t if B.shape[3] > 1 else 0
                    x = dtu[bi, g, d, t0 + t]
                    for n in range(nn):
                        hs[t + 1, n] = a[bi, g, d, t, n] * hs[t, n] + x * B[bb, g, db, tb, n]
                for t in range(nt - 1, -1, -1):
                    tb = t0 + t if B.shape[3] > 1 else 0
                    tc = t0 + t if C.shape[3] > 1 else 0
                    go = gy[bi, g, d, t0 + t]
                    x = dtu[bi, g, d, t0 + t]
                    step = dlt[bi, g, d, t0 + t]
                    acc_dtu = 0.0
                    acc_dlt = 0.0
                    for n in range(nn):
                        mu = np.conj(C[bc, g, dc, tc, n]) * go + lam[bi, g, d, n]
                        dC[bi, g, dc, tc, n] += np.conj(hs[t + 1, n]) * go
                        dB[bi, g, db, tb, n] += mu * x
                        acc_dtu += (mu * np.conj(B[bb, g, db, tb, n])).real
                        dP = mu * np.conj(a[bi, g, d, t, n] * hs[t, n])
                        dA[bi, g, d, n] += dP * step
                        acc_dlt += (dP * np.conj(A[g, d, n])).real
                        lam[bi, g, d, n] = np.conj(a[bi, g, d, t, n]) * mu
                    d_dtu[bi, g, d, t0 + t] += acc_dtu
                    d_dlt[bi, g, d, t0 + t] += acc_dlt

    _kernels = (forward, backward)
    return _kernels


@contextlib.contextmanager
def _torch_thread_count():
    """Run numba's parallel kernels on as many threads as torch uses, and leave torch's count as it was: numba's
    OpenMP layer shares libgomp with torch, and a parallel kernel would otherwise reset torch's intra-op threads to
    every core (`torch.set_num_threads(1)` undone by the first scan)."""
    import numba

    threads = torch.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _decays(dlt: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """a = exp(Δ·A): (b, G, Dg, T, N), contiguous."""
    return exp_fast(dlt[..., None] * A[..., None, :])


def _state_last(X: torch.Tensor) -> torch.Tensor:
    """(…, N, L) -> contiguous (…, L, N) for the kernels."""
    return X.transpose(-1, -2).contiguous()


class _NumbaScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, dlt, A, B, C, h0, chunk: int):
        forward_kernel, _ = _compile()
        length = u.shape[-1]
        dtu = (dlt * u).contiguous()
        Bt, Ct = _state_last(B), _state_last(C)
        h = h0.clone().contiguous()
        y = torch.empty(u.shape, dtype=h.dtype)
        starts = []
        with _torch_thread_count():
            for s in range(0, length, chunk):
                starts.append(h.clone())
                a = _decays(dlt[..., s:s + chunk], A)
                forward_kernel(a.numpy(), dtu.numpy(), s, Bt.numpy(), Ct.numpy(), h.numpy(), y.numpy())
        ctx.save_for_backward(u, dlt, A, B, C, torch.stack(starts))
        ctx.chunk = chunk
        return (2 * y.real if y.is_complex() else y), h

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh):
        _, backward_kernel = _compile()
        u, dlt, A, B, C, starts = ctx.saved_tensors
        chunk = ctx.chunk
        dtu = (dlt * u).contiguous()
        Bt, Ct = _state_last(B), _state_last(C)
        gy = (2 * dy if A.is_complex() else dy).contiguous()
        lam = dh.to(starts.dtype).clone().contiguous()
        d_dtu, d_dlt = torch.zeros_like(u), torch.zeros_like(u)
        dA = torch.zeros((u.shape[0],) + A.shape, dtype=A.dtype)
        dBt = torch.zeros((u.shape[0],) + Bt.shape[1:], dtype=Bt.dtype)
        dCt = torch.zeros((u.shape[0],) + Ct.shape[1:], dtype=Ct.dtype)
        arrays = [X.numpy() for X in (dtu, A, dlt, Bt, Ct)]
        outputs = [X.numpy() for X in (gy, lam, d_dtu, d_dlt, dA, dBt, dCt)]
        with _torch_thread_count():
            for i in reversed(range(starts.shape[0])):
                s = i * chunk
                a = _decays(dlt[..., s:s + chunk], A).numpy()
                backward_kernel(a, arrays[0], s, *arrays[1:], starts[i].contiguous().numpy(), *outputs)
        dB = dBt.sum(0, keepdim=True) if B.shape[0] == 1 else dBt
        dC = dCt.sum(0, keepdim=True) if C.shape[0] == 1 else dCt
        return (d_dtu * dlt, d_dtu * u + d_dlt, dA.sum(0), dB.transpose(-1, -2), dC.transpose(-1, -2), lam, None)


def selective_scan_numba(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         initial_state=None, return_last_state=False, chunk_size: int = DEFAULT_CHUNK):
    """Selective scan with the numba CPU kernels (CPU tensors only); same signature and semantics as
    `selective_scan`, plus `chunk_size` (tokens per segment)."""
    if u.device.type != "cpu":
        raise ValueError(f"selective_scan_numba runs on CPU tensors, got {u.device}")
    return run_scan(lambda u, dlt, A, B, C, h0: _NumbaScan.apply(u, dlt, A.contiguous(), B, C, h0, chunk_size),
                    u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_last_state)
