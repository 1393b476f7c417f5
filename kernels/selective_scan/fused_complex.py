"""Fused selective scan in Triton for complex A (complex B, C and state), every complex tensor as separate real and
imaginary planes.

The layout of `fused` (real A): one program owns one (batch row, channel) and walks L in 1-D tiles of BLOCK_T tokens;
for each tile it loops over the N states, and for state n forms a = exp(Δ·A_n) = exp2(Δ·Re A_n·log2 e)·(cos, sin)
(Δ·Im A_n) and x = Δ·u·B_n, scans the complex pairs along the tile (`tl.associative_scan` with the complex combine)
and adds C_n·h into the output, y = 2·Re(Σ_n C_n·h_n) + D·u. Per-state values are scalars and the output a running
sum, so every tensor is a [BLOCK_T] vector of one layout with several tokens per thread. The state at each tile start
goes to memory: it carries the scan between tiles and is all the backward keeps (nothing of size L·N).

Sequence parallelism as in `fused`: when batch·dim programs cannot fill the GPU (`triton_tiles.split_tiles`), L is
split into chunks. A summary pass gives each chunk's end state from a zero start, s_c = Σ_t exp(A·(S_end − S_t))·x_t,
and its ΣΔ; each chunk then folds the summaries before it, H ← exp(A·ΣΔ_c)·H + s_c, and runs the full pass from its
start. The backward's summaries are the carries at the chunk starts from a zero carry,
Σ_t conj(exp(A·S_t))·conj(C_t)·g_t (S from the chunk start, inclusive), folded from the last chunk down with
conj(exp(A·ΣΔ_c)).

Backward, per tile from last to first and per state: h_t from the saved tile start (the forward's scan again),
a_t·h_{t−1} = h_t − x_t, and the adjoint μ_t = conj(C_t)·g_t + conj(a_{t+1})·μ_{t+1} (g = 2·∂y) by the blocked reverse
scan `_reverse_scan_complex` from each token's own conj(a_t) (no a_{t+1} to compute: one exp, cosine and sine per
token and state fewer), with the carry conj(a_{t1})·μ_{t1} from the next tile entering at the last token.

The first design of this kernel held [channels, N, 32 tokens] tiles with one token per lane: compiled for sm_90 its
backward took 822 warp shuffles and 240 spill instructions per tile (`make sass-counts`, BENCHMARKS.md).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..host import cast, next_power_of_2
from .triton_tiles import (LOG2E, REVERSE_SEG, _channel, _chunk_tiles, _combine_complex, _cos_sin, _element,
                           _load_seq, _load_state_row, _reverse_scan_complex, _sigmoid, _store_output, _store_token,
                           _update, grouped, launch_passes, plan_tiles, sum_rows_chunks, summary_buffers,
                           tokens_per_thread)

# (tokens per tile, warps) per pass; both passes use the same tile (the backward starts from the forward's
# tile-start states). Chosen from sm_90 compiles (BENCHMARKS.md): the backward without spills.
SHAPES = {"fwd": (512, 4), "bwd": (512, 2)}


@triton.jit
def _decay(dt, Ar2n, Ain):
    """a = exp(Δ·A_n) for A_n = Ar + i·Ai (Ar2n = Ar·log2 e), as (real, imaginary) [BLOCK_T]; the rotation by
    `_cos_sin` (libdevice's cos and sin made every complex kernel spill; 13-31% slower on an H100, BENCHMARKS.md)."""
    mag = tl.exp2(dt * Ar2n)
    cos, sin = _cos_sin(dt * Ain)
    return mag * cos, mag * sin


@triton.jit
def _mul_state(Hr, Hi, offs_n, n, pr, pi, add_r, add_i):
    """State n of the complex states (Hr, Hi) [BLOCK_N] ← p·H_n + add (p, add scalars as (real, imaginary))."""
    hr, hi = _element(Hr, offs_n, n), _element(Hi, offs_n, n)
    return _update(Hr, offs_n, n, pr * hr - pi * hi + add_r), _update(Hi, offs_n, n, pr * hi + pi * hr + add_i)


@triton.jit
def _fold_chunks_complex(Hr, Hi, Ar_ptr, Ai_ptr, sumr_ptr, sumi_ptr, dtsum_ptr, d, row, offs_n, mask_n, n_state,
                         n_chunks, c_first, n_fold, step: tl.constexpr, CONJ: tl.constexpr):
    """Apply n_fold chunk summaries c_first, c_first + step, … to the states (Hr, Hi) [BLOCK_N]:
    H ← P_c·H + s_c with P_c = exp(A·ΣΔ_c), or conj(P_c) with CONJ (the backward's carries)."""
    Ar2 = tl.load(Ar_ptr + d * n_state + offs_n, mask=mask_n, other=0.0) * LOG2E
    Ai = tl.load(Ai_ptr + d * n_state + offs_n, mask=mask_n, other=0.0)
    for j in range(0, n_fold):
        c = c_first + j * step
        pr, pi = _decay(tl.load(dtsum_ptr + row * n_chunks + c), Ar2, Ai)
        if CONJ:
            pi = -pi
        offs = (row * n_chunks + c) * n_state + offs_n
        sr = tl.load(sumr_ptr + offs, mask=mask_n, other=0.0)
        si = tl.load(sumi_ptr + offs, mask=mask_n, other=0.0)
        Hr, Hi = pr * Hr - pi * Hi + sr, pr * Hi + pi * Hr + si
    return Hr, Hi


@triton.jit
def _carry_through_tile_complex(Hr, Hi, offs_n, n, E, S_tile, wr, wi, Ar2n, Ain, CONJ: tl.constexpr):
    """Carry state n of (Hr, Hi) [BLOCK_N] through one tile without a scan (the summary passes):
    H_n ← exp(A_n·S_tile)·H_n + Σ_t exp(A_n·E_t)·w_t, every exp conjugated with CONJ."""
    er, ei = _decay(E, Ar2n, Ain)
    pr, pi = _decay(S_tile, Ar2n, Ain)
    if CONJ:
        ei = -ei
        pi = -pi
    return _mul_state(Hr, Hi, offs_n, n, pr, pi, tl.sum(er * wr - ei * wi, axis=0), tl.sum(er * wi + ei * wr, axis=0))


@triton.jit
def _tile_states(hsr_ptr, hsi_ptr, Br_ptr, Bi_ptr, row, row_bc, d, n, n_state, n_tiles, k, t, first, L, dt, dtu,
                 Ar2n, Ain, B_CONST: tl.constexpr):
    """State n (A_n = Ar + i·Ai, Ar2n = Ar·log2 e) over tile k from its saved start: h_t (real, imaginary),
    x_t = Δu·B_t, a_t and B_t, each [BLOCK_T]. The start state enters the scan at the tile's first token
    (`first`): x_0 + a_0·h_start there, so that no product with the scanned a follows it."""
    Brn = _load_state_row(Br_ptr, row_bc, d, n, n_state, t, L, B_CONST)
    Bin = _load_state_row(Bi_ptr, row_bc, d, n, n_state, t, L, B_CONST)
    ar, ai = _decay(dt, Ar2n, Ain)
    xr, xi = dtu * Brn, dtu * Bin
    start = (row * (n_tiles + 1) + k) * n_state + n
    hr0 = tl.load(hsr_ptr + start)
    hi0 = tl.load(hsi_ptr + start)
    _, _, hr, hi = tl.associative_scan((ar, ai, tl.where(first, ar * hr0 - ai * hi0 + xr, xr),
                                        tl.where(first, ar * hi0 + ai * hr0 + xi, xi)), axis=0,
                                       combine_fn=_combine_complex)
    return hr, hi, xr, xi, ar, ai, Brn, Bin


@triton.jit
def _fwd_kernel_complex(u_ptr, dt_ptr, z_ptr, Ar_ptr, Ai_ptr, Br_ptr, Bi_ptr, Cr_ptr, Ci_ptr, D_ptr, bias_ptr,
                        h0r_ptr, h0i_ptr, out_ptr, hsr_ptr, hsi_ptr, sumr_ptr, sumi_ptr, dtsum_ptr, dim, L, n_state,
                        n_groups, dim_per_group, n_tiles, tiles_per_chunk, B_CONST: tl.constexpr,
                        C_CONST: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                        SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr, SUMMARY: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_T: tl.constexpr, PER_THREAD: tl.constexpr):
    """One (batch row, channel, chunk of L). SUMMARY: the chunk's end state from zero and its ΣΔ, into sum
    (batch, dim, n_chunks, N) and dtsum (batch, dim, n_chunks). Otherwise: outputs, and the state at every tile start
    in hs (batch, dim, n_tiles + 1, N), the last entry the last state (padding steps are identities). PER_THREAD:
    `_store_token`."""
    d, row, row_bc = _channel(dim, n_groups, dim_per_group)
    chunk, n_chunks, k0, k1 = _chunk_tiles(tiles_per_chunk, n_tiles)
    offs_t = tl.arange(0, BLOCK_T)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < n_state
    bias = tl.load(bias_ptr + d) if HAS_BIAS else 0.0
    Dv = tl.load(D_ptr + d) if HAS_D else 0.0
    if HAS_H0 and not SUMMARY:
        Hr = tl.load(h0r_ptr + row * n_state + offs_n, mask=mask_n, other=0.0)
        Hi = tl.load(h0i_ptr + row * n_state + offs_n, mask=mask_n, other=0.0)
    else:
        Hr = tl.zeros([BLOCK_N], tl.float32)
        Hi = tl.zeros([BLOCK_N], tl.float32)
    if not SUMMARY:
        Hr, Hi = _fold_chunks_complex(Hr, Hi, Ar_ptr, Ai_ptr, sumr_ptr, sumi_ptr, dtsum_ptr, d, row, offs_n, mask_n,
                                      n_state, n_chunks, 0, chunk, 1, False)
        first = (row * (n_tiles + 1) + k0) * n_state + offs_n
        tl.store(hsr_ptr + first, Hr, mask=mask_n)
        tl.store(hsi_ptr + first, Hi, mask=mask_n)
        tl.debug_barrier()
    dt_acc = tl.zeros([BLOCK_T], tl.float32)
    for k in range(k0, k1):
        t0 = k * BLOCK_T
        t = t0 + offs_t
        u, dt = _load_seq(u_ptr, dt_ptr, bias, row, t, L, HAS_BIAS, SOFTPLUS, t0, t0 + BLOCK_T)
        dtu = dt * u
        if SUMMARY:  # end state = Σ_t exp(A·Σ_{r>t} Δ_r)·x_t over the tile, then carried: no scan, no output
            S_tile = tl.sum(dt, axis=0)
            rest = tl.maximum(S_tile - tl.cumsum(dt, axis=0), 0.0)
            dt_acc += dt
            for n in range(n_state):
                Brn = _load_state_row(Br_ptr, row_bc, d, n, n_state, t, L, B_CONST)
                Bin = _load_state_row(Bi_ptr, row_bc, d, n, n_state, t, L, B_CONST)
                Hr, Hi = _carry_through_tile_complex(Hr, Hi, offs_n, n, rest, S_tile, dtu * Brn, dtu * Bin,
                                                     tl.load(Ar_ptr + d * n_state + n) * LOG2E,
                                                     tl.load(Ai_ptr + d * n_state + n), False)
        else:
            y = tl.zeros([BLOCK_T], tl.float32)
            # the tile's last state starts the next tile, or is the last state; the next chunk's start is written by
            # that chunk
            save_end = (k + 1 < k1) | (k + 1 == n_tiles)
            for n in range(n_state):
                Ar2n = tl.load(Ar_ptr + d * n_state + n) * LOG2E
                Ain = tl.load(Ai_ptr + d * n_state + n)
                hr, hi, xr, xi, ar, ai, Brn, Bin = _tile_states(hsr_ptr, hsi_ptr, Br_ptr, Bi_ptr, row, row_bc, d, n,
                                                                n_state, n_tiles, k, t, offs_t == 0, L, dt, dtu, Ar2n,
                                                                Ain, B_CONST)
                Crn = _load_state_row(Cr_ptr, row_bc, d, n, n_state, t, L, C_CONST)
                Cin = _load_state_row(Ci_ptr, row_bc, d, n, n_state, t, L, C_CONST)
                y += Crn * hr - Cin * hi
                nxt = (row * (n_tiles + 1) + k + 1) * n_state + n
                _store_token(hsr_ptr + nxt, hr, BLOCK_T - 1, save_end, 1, PER_THREAD)
                _store_token(hsi_ptr + nxt, hi, BLOCK_T - 1, save_end, 1, PER_THREAD)
            _store_output(out_ptr, out_ptr, z_ptr, row * L + t, 2.0 * y + Dv * u, t < L, HAS_Z, False)
            tl.debug_barrier()  # the next tile reads the start states written above by other threads
    if SUMMARY:
        offs = (row * n_chunks + chunk) * n_state + offs_n
        tl.store(sumr_ptr + offs, Hr, mask=mask_n)
        tl.store(sumi_ptr + offs, Hi, mask=mask_n)
        tl.store(dtsum_ptr + row * n_chunks + chunk, tl.sum(dt_acc, axis=0))


@triton.jit
def _bwd_kernel_complex(u_ptr, dt_ptr, z_ptr, Ar_ptr, Ai_ptr, Br_ptr, Bi_ptr, Cr_ptr, Ci_ptr, D_ptr, bias_ptr,
                        hsr_ptr, hsi_ptr, dout_ptr, dhr_ptr, dhi_ptr, sumr_ptr, sumi_ptr, dtsum_ptr, nur_ptr, nui_ptr,
                        du_ptr, ddt_ptr, dz_ptr, dAr_ptr, dAi_ptr, dBr_ptr, dBi_ptr, dCr_ptr, dCi_ptr, dD_ptr,
                        dbias_ptr, dim, L, n_state, n_groups, dim_per_group, n_tiles, tiles_per_chunk,
                        B_CONST: tl.constexpr, C_CONST: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                        HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_DHLAST: tl.constexpr,
                        SUMMARY: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr):
    """One (batch row, channel, chunk of L), in PyTorch's conjugate convention: with g = 2·∂y (real),
    μ_t = conj(C_t)·g_t + conj(a_{t+1})·μ_{t+1}; ∂(Δ·A) = μ·conj(a_t·h_{t−1}); ∂B = μ·Δu; ∂C = conj(h)·g;
    ∂(Δu) = Re Σ μ·conj(B); ∂Δ += Re Σ ∂(Δ·A)·conj(A); ∂h0 = conj(a_0)·μ_0. The carry between tiles,
    conj(a_{t0})·μ_{t0} per state, goes through nu (batch, dim, n_chunks, N); chunk 0's ends as ∂h0. SUMMARY: that
    carry at the chunk start from a zero carry, and the chunk's ΣΔ. dA, dD, dbias, and dB/dC when constant, per
    (batch row, channel, chunk); dB/dC when variable by atomic adds."""
    d, row, row_bc = _channel(dim, n_groups, dim_per_group)
    chunk, n_chunks, k0, k1 = _chunk_tiles(tiles_per_chunk, n_tiles)
    offs_t = tl.arange(0, BLOCK_T)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < n_state
    is_first = offs_t == 0
    is_last = offs_t == BLOCK_T - 1
    bias = tl.load(bias_ptr + d) if HAS_BIAS else 0.0
    Dv = tl.load(D_ptr + d) if HAS_D else 0.0
    chunk_offs = (row * n_chunks + chunk) * n_state + offs_n
    if HAS_DHLAST and not SUMMARY:  # the carry entering after the last chunk
        NUr = tl.load(dhr_ptr + row * n_state + offs_n, mask=mask_n, other=0.0)
        NUi = tl.load(dhi_ptr + row * n_state + offs_n, mask=mask_n, other=0.0)
    else:
        NUr = tl.zeros([BLOCK_N], tl.float32)
        NUi = tl.zeros([BLOCK_N], tl.float32)
    if not SUMMARY:
        NUr, NUi = _fold_chunks_complex(NUr, NUi, Ar_ptr, Ai_ptr, sumr_ptr, sumi_ptr, dtsum_ptr, d, row, offs_n,
                                        mask_n, n_state, n_chunks, n_chunks - 1, n_chunks - 1 - chunk, -1, True)
        tl.store(nur_ptr + chunk_offs, NUr, mask=mask_n)
        tl.store(nui_ptr + chunk_offs, NUi, mask=mask_n)
        tl.debug_barrier()
    dAr_acc = tl.zeros([BLOCK_N], tl.float32)
    dAi_acc = tl.zeros([BLOCK_N], tl.float32)
    dBr_acc = tl.zeros([BLOCK_N], tl.float32)  # constant B, C
    dBi_acc = tl.zeros([BLOCK_N], tl.float32)
    dCr_acc = tl.zeros([BLOCK_N], tl.float32)
    dCi_acc = tl.zeros([BLOCK_N], tl.float32)
    zero_t = tl.zeros([BLOCK_T], tl.float32)
    dt_acc = zero_t
    dD_acc = tl.sum(zero_t, axis=0)  # scalars, 0
    dbias_acc = tl.sum(zero_t, axis=0)
    for j in range(0, k1 - k0):
        k = k1 - 1 - j
        t0 = k * BLOCK_T
        t = t0 + offs_t
        mask_t = t < L
        u, dt = _load_seq(u_ptr, dt_ptr, bias, row, t, L, HAS_BIAS, SOFTPLUS, t0, t0 + BLOCK_T)
        dout = tl.load(dout_ptr + row * L + t, mask=mask_t, other=0.0).to(tl.float32)
        if HAS_Z:
            z = tl.load(z_ptr + row * L + t, mask=mask_t, other=0.0).to(tl.float32)
            sig = _sigmoid(z)
            go = dout * z * sig  # ∂L/∂(y + D·u)
        else:
            go = dout
        g = 2.0 * go
        if SUMMARY:  # ν_{t0} = Σ_t conj(exp(A·S_t))·conj(C_t)·g_t + conj(exp(A·ΣΔ))·ν_{t1}
            S = tl.cumsum(dt, axis=0)
            S_tile = tl.sum(dt, axis=0)
            dt_acc += dt
            for n in range(n_state):
                Crn = _load_state_row(Cr_ptr, row_bc, d, n, n_state, t, L, C_CONST)
                Cin = _load_state_row(Ci_ptr, row_bc, d, n, n_state, t, L, C_CONST)
                NUr, NUi = _carry_through_tile_complex(NUr, NUi, offs_n, n, S, S_tile, Crn * g, -Cin * g,
                                                       tl.load(Ar_ptr + d * n_state + n) * LOG2E,
                                                       tl.load(Ai_ptr + d * n_state + n), True)
        else:
            dtu = dt * u
            y = zero_t          # 2·Re Σ C·h: the output before the gate, for dz
            d_dtu = zero_t      # Re Σ_n μ·conj(B)
            d_dtA = zero_t      # Re Σ_n ∂(Δ·A)·conj(A)
            for n in range(n_state):
                Arn = tl.load(Ar_ptr + d * n_state + n)
                Ain = tl.load(Ai_ptr + d * n_state + n)
                hr, hi, xr, xi, ar, ai, Brn, Bin = _tile_states(hsr_ptr, hsi_ptr, Br_ptr, Bi_ptr, row, row_bc, d, n,
                                                                n_state, n_tiles, k, t, is_first, L, dt, dtu,
                                                                Arn * LOG2E, Ain, B_CONST)
                Crn = _load_state_row(Cr_ptr, row_bc, d, n, n_state, t, L, C_CONST)
                Cin = _load_state_row(Ci_ptr, row_bc, d, n, n_state, t, L, C_CONST)
                y += Crn * hr - Cin * hi
                carry = (row * n_chunks + chunk) * n_state + n
                carry_r = tl.load(nur_ptr + carry)                                # conj(a_{t1})·μ_{t1}
                carry_i = tl.load(nui_ptr + carry)
                wr = Crn * g + tl.where(is_last, carry_r, 0.0)
                wi = -Cin * g + tl.where(is_last, carry_i, 0.0)
                mr, mi = _reverse_scan_complex(tl.reshape(ar, [1, BLOCK_T]), tl.reshape(-ai, [1, BLOCK_T]),
                                               tl.reshape(wr, [1, BLOCK_T]), tl.reshape(wi, [1, BLOCK_T]), REVERSE_SEG)
                mr, mi = tl.reshape(mr, [BLOCK_T]), tl.reshape(mi, [BLOCK_T])     # μ_t
                tl.store(nur_ptr + carry + 0 * offs_t, ar * mr + ai * mi, mask=is_first)
                tl.store(nui_ptr + carry + 0 * offs_t, ar * mi - ai * mr, mask=is_first)
                decr, deci = hr - xr, hi - xi                                      # a_t·h_{t−1}
                dPr = mr * decr + mi * deci                                        # μ·conj(a_t·h_{t−1})
                dPi = mi * decr - mr * deci
                dAr_acc = _update(dAr_acc, offs_n, n, _element(dAr_acc, offs_n, n) + tl.sum(dPr * dt, axis=0))
                dAi_acc = _update(dAi_acc, offs_n, n, _element(dAi_acc, offs_n, n) + tl.sum(dPi * dt, axis=0))
                d_dtu += mr * Brn + mi * Bin
                d_dtA += dPr * Arn + dPi * Ain
                if B_CONST:
                    dBr_acc = _update(dBr_acc, offs_n, n, _element(dBr_acc, offs_n, n) + tl.sum(mr * dtu, axis=0))
                    dBi_acc = _update(dBi_acc, offs_n, n, _element(dBi_acc, offs_n, n) + tl.sum(mi * dtu, axis=0))
                else:
                    bc = (row_bc * n_state + n) * L + t
                    tl.atomic_add(dBr_ptr + bc, mr * dtu, mask=mask_t, sem="relaxed")
                    tl.atomic_add(dBi_ptr + bc, mi * dtu, mask=mask_t, sem="relaxed")
                if C_CONST:
                    dCr_acc = _update(dCr_acc, offs_n, n, _element(dCr_acc, offs_n, n) + tl.sum(hr * g, axis=0))
                    dCi_acc = _update(dCi_acc, offs_n, n, _element(dCi_acc, offs_n, n) - tl.sum(hi * g, axis=0))
                else:
                    bc = (row_bc * n_state + n) * L + t
                    tl.atomic_add(dCr_ptr + bc, hr * g, mask=mask_t, sem="relaxed")
                    tl.atomic_add(dCi_ptr + bc, -hi * g, mask=mask_t, sem="relaxed")
            tl.store(du_ptr + row * L + t, d_dtu * dt + Dv * go, mask=mask_t)
            ddt = d_dtu * u + d_dtA
            if SOFTPLUS:
                raw = tl.load(dt_ptr + row * L + t, mask=mask_t, other=0.0).to(tl.float32) + bias
                ddt = ddt * _sigmoid(raw)
            ddt = tl.where(mask_t, ddt, 0.0)
            tl.store(ddt_ptr + row * L + t, ddt, mask=mask_t)
            if HAS_Z:
                tl.store(dz_ptr + row * L + t, dout * (2.0 * y + Dv * u) * sig * (1.0 + z * (1.0 - sig)),
                         mask=mask_t)
            dD_acc += tl.sum(go * u, axis=0)
            dbias_acc += tl.sum(ddt, axis=0)
            tl.debug_barrier()  # the previous tile reads the carries written above by other threads
    if SUMMARY:
        tl.store(sumr_ptr + chunk_offs, NUr, mask=mask_n)
        tl.store(sumi_ptr + chunk_offs, NUi, mask=mask_n)
        tl.store(dtsum_ptr + row * n_chunks + chunk, tl.sum(dt_acc, axis=0))
    else:
        tl.store(dAr_ptr + chunk_offs, dAr_acc, mask=mask_n)
        tl.store(dAi_ptr + chunk_offs, dAi_acc, mask=mask_n)
        if B_CONST:
            tl.store(dBr_ptr + chunk_offs, dBr_acc, mask=mask_n)
            tl.store(dBi_ptr + chunk_offs, dBi_acc, mask=mask_n)
        if C_CONST:
            tl.store(dCr_ptr + chunk_offs, dCr_acc, mask=mask_n)
            tl.store(dCi_ptr + chunk_offs, dCi_acc, mask=mask_n)
        if HAS_D:
            tl.store(dD_ptr + row * n_chunks + chunk, dD_acc)
        if HAS_BIAS:
            tl.store(dbias_ptr + row * n_chunks + chunk, dbias_acc)


def _plan(kind: str, batch: int, dim: int, L: int, device: torch.device) -> tuple[int, int, int, int, int]:
    """BLOCK_T, warps, n_tiles, tiles_per_chunk, n_chunks of one pass (`plan_tiles` over SHAPES)."""
    return plan_tiles(*SHAPES[kind], SHAPES, batch * dim, L, device)


def _planes(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary planes of a (possibly real) tensor, fp32, contiguous."""
    X = X.to(torch.complex64)
    return X.real.contiguous(), X.imag.contiguous()


class _FusedScanComplex(torch.autograd.Function):
    """`_FusedScan` for complex A (complex B, C and state; real B or C are promoted)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, softplus: bool, groups: int):
        batch, dim, L = u.shape
        n_state = A.shape[1]
        u, delta = u.contiguous(), delta.contiguous()
        z = z.contiguous() if z is not None else None
        (Ar, Ai), (Br, Bi), (Cr, Ci) = _planes(A), _planes(grouped(B)), _planes(grouped(C))
        D32 = cast(D, torch.float32) if D is not None else None
        bias32 = cast(delta_bias, torch.float32) if delta_bias is not None else None
        h0r, h0i = _planes(initial_state) if initial_state is not None else (None, None)
        block_t, warps, n_tiles, tiles_per_chunk, n_chunks = _plan("fwd", batch, dim, L, u.device)
        f32 = dict(device=u.device, dtype=torch.float32)
        out = torch.empty_like(u)
        hsr, hsi = (torch.empty(batch, dim, n_tiles + 1, n_state, **f32) for _ in range(2))
        dummy = hsr
        sumr, sumi, dtsum = summary_buffers(batch, dim, n_chunks, n_state, dummy, planes=2)
        args = (u, delta, z if z is not None else u, Ar, Ai, Br, Bi, Cr, Ci, D32 if D32 is not None else dummy,
                bias32 if bias32 is not None else dummy, h0r if h0r is not None else dummy,
                h0i if h0i is not None else dummy, out, hsr, hsi, sumr, sumi, dtsum, dim, L, n_state, groups,
                dim // groups, n_tiles, tiles_per_chunk)
        flags = dict(B_CONST=B.dim() == 2, C_CONST=C.dim() == 2, HAS_D=D32 is not None, HAS_Z=z is not None,
                     HAS_BIAS=bias32 is not None, SOFTPLUS=softplus, HAS_H0=h0r is not None,
                     BLOCK_N=next_power_of_2(n_state), BLOCK_T=block_t, num_warps=warps,
                     PER_THREAD=tokens_per_thread(block_t, warps, u.element_size()))
        grid = (batch, dim, n_chunks)
        launch_passes(_fwd_kernel_complex, grid, args, flags)
        ctx.save_for_backward(u, delta, z, Ar, Ai, Br, Bi, Cr, Ci, D32, bias32, hsr, hsi)
        ctx.meta = (softplus, groups, n_tiles, B.dtype, C.dtype, D is not None and D.dtype,
                    delta_bias is not None and delta_bias.dtype, initial_state is not None and initial_state.dtype)
        ctx.bc_shapes = (B.shape, C.shape)
        return out, torch.complex(hsr[:, :, -1], hsi[:, :, -1])

    @staticmethod
    def backward(ctx, dout, dh_last):
        u, delta, z, Ar, Ai, Br, Bi, Cr, Ci, D32, bias32, hsr, hsi = ctx.saved_tensors
        softplus, groups, n_tiles, B_dtype, C_dtype, D_dtype, bias_dtype, h0_dtype = ctx.meta
        batch, dim, L = u.shape
        n_state = Ar.shape[1]
        block_t, warps, bwd_tiles, tiles_per_chunk, n_chunks = _plan("bwd", batch, dim, L, u.device)
        assert bwd_tiles == n_tiles, "forward and backward must use the same tokens per tile"
        f32 = dict(device=u.device, dtype=torch.float32)
        du, ddelta = torch.empty(u.shape, **f32), torch.empty(u.shape, **f32)
        dz = torch.empty(u.shape, **f32) if z is not None else None
        per_chunk = (batch, dim, n_chunks, n_state)
        dAr, dAi, nur, nui = (torch.empty(per_chunk, **f32) for _ in range(4))
        bc_grad = lambda X: torch.zeros(X.shape, **f32) if X.dim() > 2 else torch.empty(per_chunk, **f32)  # noqa: E731
        dBr, dBi, dCr, dCi = bc_grad(Br), bc_grad(Bi), bc_grad(Cr), bc_grad(Ci)
        dD = torch.empty(batch, dim, n_chunks, **f32) if D32 is not None else None
        dbias = torch.empty(batch, dim, n_chunks, **f32) if bias32 is not None else None
        dhr, dhi = _planes(dh_last) if dh_last is not None else (None, None)
        dummy = nur
        sumr, sumi, dtsum = summary_buffers(batch, dim, n_chunks, n_state, dummy, planes=2)
        args = (u, delta, z if z is not None else u, Ar, Ai, Br, Bi, Cr, Ci, D32 if D32 is not None else dummy,
                bias32 if bias32 is not None else dummy, hsr, hsi, dout.contiguous(),
                dhr if dhr is not None else dummy, dhi if dhi is not None else dummy, sumr, sumi, dtsum, nur, nui,
                du, ddelta, dz if dz is not None else du, dAr, dAi, dBr, dBi, dCr, dCi,
                dD if dD is not None else dummy, dbias if dbias is not None else dummy,
                dim, L, n_state, groups, dim // groups, n_tiles, tiles_per_chunk)
        flags = dict(B_CONST=Br.dim() == 2, C_CONST=Cr.dim() == 2, HAS_D=D32 is not None, HAS_Z=z is not None,
                     HAS_BIAS=bias32 is not None, SOFTPLUS=softplus, HAS_DHLAST=dhr is not None,
                     BLOCK_N=next_power_of_2(n_state), BLOCK_T=block_t, num_warps=warps)
        grid = (batch, dim, n_chunks)
        launch_passes(_bwd_kernel_complex, grid, args, flags)

        def gathered(re, im, dtype, shape):
            const = len(shape) == 2  # a constant (dim, N): re, im are per-chunk partial sums
            g = torch.complex(sum_rows_chunks(re), sum_rows_chunks(im)) if const else torch.complex(re, im)
            return (g if dtype.is_complex else g.real.to(dtype)).reshape(shape)

        B_shape, C_shape = ctx.bc_shapes
        return (cast(du, u.dtype), cast(ddelta, delta.dtype), torch.complex(sum_rows_chunks(dAr), sum_rows_chunks(dAi)),
                gathered(dBr, dBi, B_dtype, B_shape), gathered(dCr, dCi, C_dtype, C_shape),
                cast(sum_rows_chunks(dD), D_dtype) if dD is not None else None,
                cast(dz, z.dtype) if dz is not None else None,
                cast(sum_rows_chunks(dbias), bias_dtype) if dbias is not None else None,
                torch.complex(nur[:, :, 0], nui[:, :, 0]).to(h0_dtype) if h0_dtype else None, None, None)
