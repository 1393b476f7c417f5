"""Fused selective scan in Triton (real A): discretisation, scan, readout, D skip and z gate in one kernel.

Layout (that of the reference CUDA kernel). One program owns one (batch row, channel, chunk of L) and walks its
chunk in tiles of BLOCK_T tokens (512 to 1024: 8 to 16 per thread). A tile loads u, Δ (and z) once, then loops
over the N states, STATES (1 or 2, `_fwd_shape`) at a time: for states n it loads B[n], C[n] over the tile
([STATES, BLOCK_T]), forms a = exp2(Δ·A_n·log2 e) and x = Δ·u·B_n, scans along the tile with
`tl.associative_scan` (its cross-warp barriers shared by the STATES rows) and adds C_n·h into a running sum per
row, summed over the STATES rows once per tile (no reduction over N). The state at each start of the backward's
tiles (which divide the forward's) goes to memory: it carries the scan from tile to tile and is all the backward
keeps (O(L/BLOCK_T·N) per channel, nothing of size L·N). B and C are read by every channel's program (from L2: a
(batch, G, N, L) tensor is small next to u).

Sequence parallelism. When batch·dim programs cannot fill the GPU, L is split into chunks run by different
programs: a summary pass computes, per chunk, the end state from a zero start, s_c = Σ_t exp(A·(S_end − S_t))·x_t,
and the chunk's ΣΔ (from within-tile cumulative sums: one exp per token and state, no scan, no output; each thread
sums its own tokens per state, and the threads' sums are added once per chunk, `triton_tiles._carry_sums`); then
every chunk folds the summaries of the chunks before it, H ← exp(A·ΣΔ_c)·H + s_c, and runs the full pass from its
start.

Backward, per tile from last to first: recompute h_t from the saved tile start (scan over (a_t, x_t)); the adjoint
λ_t = go_t·C_t + a_{t+1}·λ_{t+1} by a blocked reverse scan (`triton_tiles._reverse_scan`) from each token's own a_t,
so that a_{t+1} needs no second exp per token and state;
a_t·h_{t−1} = h_t − x_t (its rounding error is at most ε·|x_t|, small next to the λ·x/Δ term of the same
gradient; the reference CUDA kernel does the same). The carry between tiles and chunks is ν = a_t·λ_t at the
tile start; a chunk's summary for the backward is ν at its start from a zero carry, Σ_t exp(A·S_t)·go_t·C_t with
S the cumulative Δ from the chunk start. dB and dC of shared B/C are summed with atomic adds, one per token for all
of a program's channels (2 where there are programs enough, `bwd_channels`: the adds took 19-35% of fwd+bwd on an
H100); per-channel parameter gradients are written per (batch row, channel, chunk) and summed by the caller. Offsets
are int64.

Two forwards. Where `fused_rows.use_rows` says so (variable B/C of one group, and batch·dim either large enough to
fill the GPU one program per 32 channels, or so small that this kernel splits L anyway, or, when a backward
follows, that the backward of 2 channels per program does: `forward_kind`), the forward is the channels-as-rows
kernel of `fused_rows`, which writes the same tile-start states for this backward.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ..host import cast, cdiv, next_power_of_2
from .common import check_inputs
from .fused_complex import _FusedScanComplex
from .fused_rows import rows_forward, use_rows
from .triton_tiles import (LOG2E, PROGRAMS_PER_SM, REVERSE_SEG, _add_to, _add_tokens, _carry_sums, _channel,
                           _chunk_tiles, _combine, _load_seq, _load_state_row, _mul_rn, _reverse_scan, _sigmoid,
                           _store_output, _store_token, _sums_start, _sums_total, bc_grad_shape, grouped, launch_passes,
                           plan_tiles, sm_count, splits_l, sum_rows_chunks, summary_buffers, tokens_per_thread,
                           zeroed)


@triton.jit
def _fold_chunks(H, A2, sum_ptr, dtsum_ptr, row, offs_n, mask_n, n_state, n_chunks, c_first, n_fold,
                 step: tl.constexpr):
    """Apply n_fold chunk summaries c_first, c_first + step, … to the states H [BLOCK_N]: H ← exp2(A2·ΣΔ_c)·H + s_c."""
    for j in range(0, n_fold):
        c = c_first + j * step
        s = tl.load(sum_ptr + (row * n_chunks + c) * n_state + offs_n, mask=mask_n, other=0.0)
        H = tl.exp2(A2 * tl.load(dtsum_ptr + row * n_chunks + c)) * H + s
    return H


@triton.jit
def _carry_through_tile(H, E, S_tile, w, A_ptr, d, n, n_state, offs_n):
    """Carry state n of H [BLOCK_N] through one tile of one channel without a scan (the backward's summary pass at one
    channel per program): H_n ← exp2(A2·S_tile)·H_n + Σ_t exp2(A2·E_t)·w_t, A2 = A[d, n]·log2 e; E, w [BLOCK_T]. A
    warp reduction and an update of H per state and tile, where `_carry_sums` keeps each thread's sums: with 16 tokens
    per thread those took 146-168 registers against 95, and fwd+bwd was 1-14% slower on an H100 (BENCHMARKS.md)."""
    A2n = tl.load(A_ptr + d * n_state + n) * LOG2E
    inside = tl.sum(tl.exp2(E * A2n) * w, axis=0)
    H_n = tl.sum(tl.where(offs_n == n, H, 0.0), axis=0)
    return tl.where(offs_n == n, tl.exp2(A2n * S_tile) * H_n + inside, H)


@triton.jit
def _fwd_kernel(u_ptr, dt_ptr, z_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, h0_ptr, out_ptr, pre_ptr,
                hstart_ptr, sum_ptr, dtsum_ptr, dim, L, n_state, n_groups, dim_per_group, n_tiles, tiles_per_chunk,
                n_saves, B_CONST: tl.constexpr, C_CONST: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr, SUMMARY: tl.constexpr,
                SAVE_PRE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, SAVE_T: tl.constexpr,
                STATES: tl.constexpr, PER_THREAD: tl.constexpr, EVEN_L: tl.constexpr, STAGES: tl.constexpr):
    """One (batch row, channel, chunk of L). SUMMARY: the chunk's end state from zero and its ΣΔ. Otherwise: outputs,
    the state at every SAVE_T-th token boundary, the backward's tile starts (entry e: the state after e·SAVE_T
    tokens; the tile-to-tile carry goes through them; entry n_saves − 1 is the last state), and with SAVE_PRE the
    output before the z gate (for dz in the backward). SAVE_T divides BLOCK_T; PER_THREAD: `_store_token`; EVEN_L:
    BLOCK_T divides L (no masks on the loads of B and C: on an H100 the forward was 2-5% faster). STAGES: the
    software pipelining of the loop over states (1: none)."""
    d, row, row_bc = _channel(dim, n_groups, dim_per_group)
    chunk, n_chunks, k0, k1 = _chunk_tiles(tiles_per_chunk, n_tiles)
    offs_t = tl.arange(0, BLOCK_T)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < n_state
    R: tl.constexpr = BLOCK_T // SAVE_T  # saves per tile: entry k·R + j after token j·SAVE_T − 1 of tile k
    A2 = tl.load(A_ptr + d * n_state + offs_n, mask=mask_n, other=0.0) * LOG2E      # A·log2 e, [BLOCK_N]
    bias = tl.load(bias_ptr + d) if HAS_BIAS else 0.0
    Dv = tl.load(D_ptr + d) if HAS_D else 0.0
    if HAS_H0 and not SUMMARY:
        H = tl.load(h0_ptr + row * n_state + offs_n, mask=mask_n, other=0.0)
    else:
        H = tl.zeros([BLOCK_N], tl.float32)
    if not SUMMARY:
        H = _fold_chunks(H, A2, sum_ptr, dtsum_ptr, row, offs_n, mask_n, n_state, n_chunks, 0, chunk, 1)
        tl.store(hstart_ptr + (row * n_saves + k0 * R) * n_state + offs_n, H, mask=mask_n)
        tl.debug_barrier()
    dt_acc = tl.zeros([BLOCK_T], tl.float32)
    if SUMMARY:  # per state: A·log2 e, and each thread's own sum (`_carry_sums`)
        A2s, sums = _sums_start(A_ptr, d, n_state, dt_acc, BLOCK_N, PER_THREAD)
    for k in range(k0, k1):
        t0 = k * BLOCK_T
        t = t0 + offs_t
        u, dt = _load_seq(u_ptr, dt_ptr, bias, row, t, L, HAS_BIAS, SOFTPLUS, t0, t0 + BLOCK_T)
        dtu = dt * u
        if SUMMARY:  # end state = Σ_t exp(A·Σ_{r>t} Δ_r)·x_t over the tile, then carried: no scan, no output
            S_tile = tl.sum(dt, axis=0)
            rest = tl.maximum(S_tile - tl.cumsum(dt, axis=0), 0.0)
            dt_acc += dt
            for n in tl.static_range(BLOCK_N):  # states from n_state on are never stored
                Bn = _load_state_row(B_ptr, row_bc, d, tl.minimum(n, n_state - 1), n_state, t, L, B_CONST)
                sums = _carry_sums(sums, n, A2s[n], rest, S_tile, dtu * Bn, PER_THREAD)
        else:
            y_states = tl.zeros([STATES, BLOCK_T], tl.float32)  # Σ C·h per slot of the scan: an FFMA per element
            offs_s = tl.arange(0, STATES)[:, None]   # states scanned together, [STATES, 1]
            tt = t[None, :]
            for n0 in tl.range(0, n_state, STATES, num_stages=STAGES):
                n = n0 + offs_s
                A2n = tl.load(A_ptr + d * n_state + n) * LOG2E                          # [STATES, 1]
                # not loaded a step ahead by hand: carried through the loop, the rows stayed 16-bit halves split and
                # widened in every step, and the forward was 3-12% faster without (0.5-5% slower at 1 × 1024 × 2^15);
                # Triton's pipelining (STAGES) copies them to shared memory ahead instead (BENCHMARKS.md)
                Bn = _load_state_row(B_ptr, row_bc, d, n, n_state, tt, L, B_CONST, EVEN_L)
                Cn = _load_state_row(C_ptr, row_bc, d, n, n_state, tt, L, C_CONST, EVEN_L)
                h_in = tl.load(hstart_ptr + (row * n_saves + k * R) * n_state + n)
                a = tl.exp2(dt[None, :] * A2n)
                x = dtu[None, :] * Bn
                x = tl.where(offs_t[None, :] == 0, a * h_in + x, x)  # the tile's start state enters at its first token
                _, h = tl.associative_scan((a, x), axis=1, combine_fn=_combine)     # h_t, [STATES, BLOCK_T]
                y_states += h * Cn
                # the saves: those inside the tile, then the tile's last state, which starts the next tile or is the
                # last state (padding steps are identities; the next chunk's start is written by that chunk). One
                # scalar address per save: an address per token cost ~20 registers and ~10% of the forward's time.
                for j in tl.static_range(1, R + 1):
                    save = k * R + j
                    _store_token(hstart_ptr + (row * n_saves + save) * n_state + n, h, j * SAVE_T - 1,
                                 (save < n_saves) & ((j < R) | (k + 1 < k1) | (k + 1 == n_tiles)), STATES, PER_THREAD)
            y = tl.sum(y_states, axis=0)
            if HAS_D:  # u again: fewer live registers through the loop over states
                y += Dv * tl.load(u_ptr + row * L + t, mask=t < L, other=0.0).to(tl.float32)
            _store_output(out_ptr, pre_ptr, z_ptr, row * L + t, y, t < L, HAS_Z, SAVE_PRE)
            tl.debug_barrier()  # the next tile reads the start states written above by other threads
    if SUMMARY:
        H = _sums_total(H, sums, offs_n)
        tl.store(sum_ptr + (row * n_chunks + chunk) * n_state + offs_n, H, mask=mask_n)
        tl.store(dtsum_ptr + row * n_chunks + chunk, tl.sum(dt_acc, axis=0))


@triton.jit
def _bwd_kernel(u_ptr, dt_ptr, z_ptr, pre_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, hstart_ptr, dout_ptr, dhlast_ptr,
                sum_ptr, dtsum_ptr, nu_ptr, du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
                dim, L, n_state, n_groups, dim_per_group, n_tiles, tiles_per_chunk,
                B_CONST: tl.constexpr, C_CONST: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_DHLAST: tl.constexpr, SUMMARY: tl.constexpr,
                PTX: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
                PER_THREAD: tl.constexpr, WARPS: tl.constexpr, EVEN_L: tl.constexpr):
    """One (batch row, BLOCK_C channels of one group, chunk of L), in [BLOCK_C, BLOCK_T] tiles (`bwd_channels`).
    SUMMARY: ν at the chunk start from a zero carry, and its ΣΔ. Otherwise: du, dΔ (raw delta), dz for the chunk's
    tokens; dA, dD, dbias (and dB, dC if constant) per (batch row, channel, chunk); dB, dC (variable) summed over the
    program's channels, then added atomically into fp32 buffers; ν at the chunk start in nu (the carry between tiles
    goes through it; chunk 0's is dh0). EVEN_L: BLOCK_T divides L, and no masks on B, C and the adds of dB, dC (on an
    H100 fwd+bwd was 2% faster at 1 channel per program, 5-7% slower at 2, where it is not set). PER_THREAD: the
    consecutive tokens each thread holds (`tokens_per_thread`), WARPS: the launch's warps, for `_add_tokens`."""
    b = tl.program_id(0).to(tl.int64)
    d0 = tl.program_id(1) * BLOCK_C
    d = d0 + tl.arange(0, BLOCK_C)[:, None]                                         # [C, 1]
    row = b * dim + d
    row_bc = b * n_groups + d0 // dim_per_group                                     # the channels share a group
    chunk, n_chunks, k0, k1 = _chunk_tiles(tiles_per_chunk, n_tiles)
    offs_t = tl.arange(0, BLOCK_T)[None, :]
    offs_seg = tl.arange(0, BLOCK_T // REVERSE_SEG)[None, :]                       # `_reverse_scan`'s segments
    THREADS: tl.constexpr = min(BLOCK_T // PER_THREAD, 32 * WARPS)                 # those the tokens spread over
    offs_n = tl.arange(0, BLOCK_N)[None, :]
    mask_n = offs_n < n_state
    A2 = tl.load(A_ptr + d * n_state + offs_n, mask=mask_n, other=0.0) * LOG2E
    bias = tl.load(bias_ptr + d) if HAS_BIAS else 0.0
    Dv = tl.load(D_ptr + d) if HAS_D else 0.0
    slot = (row * n_chunks + chunk) * n_state                                       # this program's per-state sums
    chunk_offs = slot + offs_n
    if HAS_DHLAST and not SUMMARY:
        NU = tl.load(dhlast_ptr + row * n_state + offs_n, mask=mask_n, other=0.0)   # ν entering after the chunk
    else:
        NU = tl.zeros([BLOCK_C, BLOCK_N], tl.float32)
    if not SUMMARY:
        NU = _fold_chunks(NU, A2, sum_ptr, dtsum_ptr, row, offs_n, mask_n, n_state, n_chunks, n_chunks - 1,
                          n_chunks - 1 - chunk, -1)
        tl.store(nu_ptr + chunk_offs, NU, mask=mask_n)
        tl.debug_barrier()
    dt_acc = tl.zeros([BLOCK_C, BLOCK_T], tl.float32)
    dD_acc = tl.sum(dt_acc, axis=1)
    dbias_acc = tl.sum(dt_acc, axis=1)
    if SUMMARY and BLOCK_C > 1:  # per state: A·log2 e [C, 1], and each thread's own sums (`_carry_sums`)
        A2s, sums = _sums_start(A_ptr, d, n_state, dt_acc, BLOCK_N, PER_THREAD)
    for j in range(0, k1 - k0):
        k = k1 - 1 - j
        t0 = k * BLOCK_T
        t1 = t0 + BLOCK_T
        t = t0 + offs_t
        mask_t = t < L
        u, dt = _load_seq(u_ptr, dt_ptr, bias, row, t, L, HAS_BIAS, SOFTPLUS, t0, t1)
        dout = tl.load(dout_ptr + row * L + t, mask=mask_t, other=0.0).to(tl.float32)
        if HAS_Z:
            z = tl.load(z_ptr + row * L + t, mask=mask_t, other=0.0).to(tl.float32)
            sig = _sigmoid(z)
            go = dout * z * sig                                                     # ∂L/∂(y + D·u)
            if not SUMMARY:  # dz from the forward's output before the gate
                pre = tl.load(pre_ptr + row * L + t, mask=mask_t, other=0.0).to(tl.float32)
                dz = dout * pre * sig * (1.0 + z * (1.0 - sig))
                tl.store(dz_ptr + row * L + t, dz.to(dz_ptr.dtype.element_ty), mask=mask_t)
        else:
            go = dout
        if SUMMARY:  # ν_{t0} = Σ_t exp(A·Σ_{r≤t} Δ_r)·go_t·C_t + exp(A·ΣΔ)·ν_{t1}
            dt_acc += dt
            if BLOCK_C == 1:  # 1-D tiles, H_n updated per tile (`_carry_through_tile`; BENCHMARKS.md)
                dt1, go1, offs_n1 = tl.reshape(dt, [BLOCK_T]), tl.reshape(go, [BLOCK_T]), tl.arange(0, BLOCK_N)
                S, S_tile, NU1 = tl.cumsum(dt1, axis=0), tl.sum(dt1, axis=0), tl.reshape(NU, [BLOCK_N])
                for n in range(n_state):
                    Cn = tl.reshape(_load_state_row(C_ptr, row_bc, d0, n, n_state, t, L, C_CONST), [BLOCK_T])
                    NU1 = _carry_through_tile(NU1, S, S_tile, go1 * Cn, A_ptr, d0, n, n_state, offs_n1)
                NU = tl.reshape(NU1, [1, BLOCK_N])
            else:
                S, S_tile = tl.cumsum(dt, axis=1), tl.sum(dt, axis=1)[:, None]
                for n in tl.static_range(BLOCK_N):  # states from n_state on are never stored
                    Cn = _load_state_row(C_ptr, row_bc, d, tl.minimum(n, n_state - 1), n_state, t, L, C_CONST)
                    sums = _carry_sums(sums, n, A2s[n], S, S_tile, go * Cn, PER_THREAD)
        else:
            dtu = dt * u
            lam_B = tl.zeros([BLOCK_C, BLOCK_T], tl.float32)
            lam_AhA = tl.zeros([BLOCK_C, BLOCK_T], tl.float32)
            B_next = _load_state_row(B_ptr, row_bc, d, 0, n_state, t, L, B_CONST, EVEN_L)
            C_next = _load_state_row(C_ptr, row_bc, d, 0, n_state, t, L, C_CONST, EVEN_L)
            h_starts = hstart_ptr + (row * (n_tiles + 1) + k) * n_state                # the tile's start states
            A_next, h_next, nu_next = tl.load(A_ptr + d * n_state), tl.load(h_starts), tl.load(nu_ptr + slot)
            for n in range(n_state):
                # state n's inputs were loaded a step ahead (on an H100, B and C: fwd+bwd 5-14% faster than loaded
                # at use; A, the start state and ν: 1-5% more; BENCHMARKS.md). ν[n + 1] is read before this step
                # writes ν[n], the carry for the tile before
                An, Bn, Cn, h_in, nu_in = A_next, B_next, C_next, h_next, nu_next
                A2n = An * LOG2E
                n_next = tl.minimum(n + 1, n_state - 1)
                B_next = _load_state_row(B_ptr, row_bc, d, n_next, n_state, t, L, B_CONST, EVEN_L)
                C_next = _load_state_row(C_ptr, row_bc, d, n_next, n_state, t, L, C_CONST, EVEN_L)
                A_next, h_next = tl.load(A_ptr + d * n_state + n_next), tl.load(h_starts + n_next)
                nu_next = tl.load(nu_ptr + slot + n_next)
                a = tl.exp2(dt * A2n)
                x = _mul_rn(dtu, Bn, PTX)  # not fused into h − x below: exact 0 where h_{t−1} = 0
                # the tile's start state enters at its first token; x itself stays for h − x below
                _, h = tl.associative_scan((a, tl.where(offs_t == 0, a * h_in + x, x)), axis=1, combine_fn=_combine)
                # λ_t by the blocked `_reverse_scan` from a_t, the carry ν = a·λ at the next tile's start entering
                # at the last token. Triton's own reverse scan sends every element through ~20 warp shuffles (391 per
                # state for sm_90 against 97 here); fwd+bwd took 1.13-1.27× as long with it on the H100 (BENCHMARKS.md).
                w = go * Cn + tl.where(offs_t == BLOCK_T - 1, nu_in, 0.0)
                lam, rho = _reverse_scan(a, w, REVERSE_SEG)
                # ν = a·λ at the first token, the previous tile's carry. On one warp: the reverse scan's ρ of the
                # first segment, stored by the thread that holds it (a·λ went through shared memory and a barrier
                # first; fwd+bwd 1-3% faster on an H100). On 2 warps that was 1.2x slower (BENCHMARKS.md)
                if WARPS == 1:
                    tl.store(nu_ptr + slot + n + 0 * offs_seg, rho, mask=offs_seg == 0)
                else:
                    tl.store(nu_ptr + slot + n + 0 * offs_t, a * lam, mask=offs_t == 0)
                lam_B += lam * Bn
                dP = lam * (h - x)                                                  # λ·a_t·h_{t−1} = ∂(Δ·A)
                lam_AhA += dP * An
                _add_to(dA_ptr, slot, n, tl.sum(dP * dt, axis=1)[:, None])
                if B_CONST:
                    _add_to(dB_ptr, slot, n, tl.sum(lam * dtu, axis=1)[:, None])
                else:  # the program's channels summed in-thread first: one atomic add per token for all of them
                    _add_tokens(dB_ptr + (row_bc * n_state + n) * L, t0, L, tl.sum(lam * dtu, axis=0), PER_THREAD,
                                THREADS, EVEN_L)
                if C_CONST:
                    _add_to(dC_ptr, slot, n, tl.sum(h * go, axis=1)[:, None])
                else:
                    _add_tokens(dC_ptr + (row_bc * n_state + n) * L, t0, L, tl.sum(h * go, axis=0), PER_THREAD,
                                THREADS, EVEN_L)
            u = tl.load(u_ptr + row * L + t, mask=mask_t, other=0.0).to(tl.float32)  # again: fewer live registers
            tl.store(du_ptr + row * L + t, (lam_B * dt + Dv * go).to(du_ptr.dtype.element_ty), mask=mask_t)
            ddt = lam_B * u + lam_AhA
            if SOFTPLUS:
                raw = tl.load(dt_ptr + row * L + t, mask=mask_t, other=0.0).to(tl.float32) + bias
                ddt = ddt * _sigmoid(raw)
            ddt = tl.where(mask_t, ddt, 0.0)
            tl.store(ddt_ptr + row * L + t, ddt.to(ddt_ptr.dtype.element_ty), mask=mask_t)
            dD_acc += tl.sum(go * u, axis=1)
            dbias_acc += tl.sum(ddt, axis=1)
            tl.debug_barrier()  # the previous tile reads the carries written above by other threads
    if SUMMARY:
        if BLOCK_C > 1:
            NU = _sums_total(NU, sums, offs_n)
        tl.store(sum_ptr + chunk_offs, NU, mask=mask_n)
        tl.store(dtsum_ptr + row * n_chunks + chunk, tl.sum(dt_acc, axis=1)[:, None])
    else:
        if HAS_D:
            tl.store(dD_ptr + row * n_chunks + chunk, dD_acc[:, None])
        if HAS_BIAS:
            tl.store(dbias_ptr + row * n_chunks + chunk, dbias_acc[:, None])


# Launch shapes per pass: (tokens per tile, warps). The forward saves the state at every start of the backward's
# tiles, so the backward's tile divides the forward's. When L is split into chunks: `triton_tiles.split_tiles`.
# Sweeps on an H100 (BENCHMARKS.md, `make bench-tiles`): the forward 1024 tokens, 4 warps; the backward 512 tokens,
# 1 warp (fwd+bwd 10-19% faster than 1024 and 2 warps), except between 3 and BWD_NARROW_FROM_PER_SM programs per SM
# (L not split, and too few warps in flight at one per program: batch 1 × 512 channels at L = 2^20 took 1.5x as
# long), where it keeps BWD_SHAPE_FEW_PROGRAMS. A backward of 2 channels per program (`bwd_channels`) takes half
# the tokens per tile on the same warps. A forward of 2 states per scan (`_fwd_shape`) takes half the tokens on half
# the warps where the backward's tiles still divide its own (1 × 1024 on an H100: 512 tokens on 2 warps were 8% faster
# than 1024 on 4; 1 warp, or 4 tokens per thread on 8 warps, were slower).
SHAPES = {"fwd": (1024, 4), "bwd": (512, 1)}
# Software-pipelining stages of the forward's loop over states (B, C, A and the start states of the next states
# copied to shared memory while these scan): 3 in the half tiles (512 tokens on 2 warps; on an H100 the forward was
# 1-3% faster at 1 × 1024 from L = 2^15 and at 4 × 1536 × 2^16, 2 stages mixed), none in 1,024-token tiles on 4 warps
# (3 stages 3% slower at 1 × 512 × 2^20; BENCHMARKS.md).
FWD_STAGES_HALF_TILES = 3
BWD_SHAPE_FEW_PROGRAMS = (1024, 2)
BWD_NARROW_FROM_PER_SM = 6
# Where the backward splits L: about 32 programs per SM in all, 4 waves of the 8 that fit at a time (one warp, ~255
# registers). On an H100 against 16 (two waves) fwd+bwd was 1.3% faster at 1 × 256 × 2^20 (2 channels, 33 chunks),
# 1.3% at 1 × 512 × 2^20 (16 chunks; 32 chunks 2.5%), level at 1 × 128 × 2^20 (BENCHMARKS.md).
BWD_PROGRAMS_PER_SM = 32


def pairs_split(batch: int, dim: int, device: torch.device) -> bool:
    """Whether the backward of 2 channels per program (batch·dim / 2 programs) is too few to fill the GPU, and so
    splits L into chunks (`triton_tiles.split_tiles`)."""
    return splits_l(batch * dim // 2, device)


def bwd_channels(batch: int, dim: int, groups: int, B: torch.Tensor, C: torch.Tensor, device: torch.device,
                 rows_forward: bool = False) -> int:
    """Channels per program of the backward, all of one group: 2 (tiles of [2, 256 tokens] on one warp, each
    thread holding both channels' tokens, so that dB and dC are summed over the two in-thread before their atomic
    adds) where B and C vary, the group's channels are even, and either the programs still number at least
    BWD_NARROW_FROM_PER_SM per SM or, behind the rows forward (`rows_forward`), so few that the backward splits L
    into chunks anyway; else 1. MBA_SCAN_BWD_CHANNELS forces a count (halved until it divides the group).
    On an H100 (BENCHMARKS.md) 2 channels took 7.5-10.5% off fwd+bwd at 8 × 2048 × 2048 and 8192 and 4 × 1536 × 2^16,
    and 14% at 1 × 256 × 2^20 (L split); they were 19-26% slower at 1 × 1024 (512 programs of one warp: too few warps
    in flight). Not behind the `fused` forward where L is split (1 × 512 × 2^20): its saves every 256 tokens instead
    of 512 made its forward 31% slower."""
    forced = os.environ.get("MBA_SCAN_BWD_CHANNELS")
    if forced:
        channels = int(forced)
        while channels > 1 and (dim // groups) % channels:
            channels //= 2
        return channels
    many = batch * dim // 2 >= BWD_NARROW_FROM_PER_SM * sm_count(device)
    split = rows_forward and pairs_split(batch, dim, device)
    return 2 if B.dim() > 2 and C.dim() > 2 and (dim // groups) % 2 == 0 and (many or split) else 1


def _plan(kind: str, batch: int, dim: int, L: int, device: torch.device, channels: int = 1):
    """BLOCK_T, warps, n_tiles, tiles_per_chunk, n_chunks for one pass; the backward's programs take `channels`
    channels each, in tiles of as many fewer tokens."""
    programs = batch * dim // channels
    block_t, warps = SHAPES[kind]
    if kind == "bwd" and channels > 1:
        block_t //= channels
    elif kind == "bwd" and not splits_l(programs, device) and programs < BWD_NARROW_FROM_PER_SM * sm_count(device):
        block_t, warps = BWD_SHAPE_FEW_PROGRAMS
    return plan_tiles(block_t, warps, SHAPES, programs, L, device, BWD_PROGRAMS_PER_SM if kind == "bwd" else
                      PROGRAMS_PER_SM)


def _fwd_shape(programs: int, n_state: int, device: torch.device) -> tuple[int, dict]:
    """States per scan of the forward (`_fwd_kernel`'s STATES) and its launch options (a per-thread register cap),
    from H100 sweeps (BENCHMARKS.md).
    - N even: 2 states per scan, so that one set of the scan's shuffles and cross-warp barriers serves both, capped
      at 128 registers. In `_forward`'s half tiles (512 tokens on 2 warps, 8 programs per SM) the forward was 3-15%
      faster than one state at every configuration timed (batch 1 × 1024 at L = 2^11 to 2^19, 1 × 512 × 2^20,
      2 × 1024 and 4 × 1024 × 2^15, 4 × 1536 × 2^16); 4 states (252 registers) were 15-30% slower. After later
      changes to the loop one state (in 1,024-token tiles) was level at 1 × 1024 × 2^19 and 1.6× slower at
      1 × 512 × 2^20.
    - N odd: one state, uncapped (~100 registers) up to 5 programs per SM, capped at 64 (8 per SM, one wave) up to
      8, and at 80 (6 per SM) beyond.
    MBA_SCAN_FWD_STATES forces the states per scan (1 or 2; 1 where N is odd). The interpreter takes no cap, nor does
    the backward on a GPU (every cap tried spilled and ran 1.3-2.5× slower)."""
    forced = os.environ.get("MBA_SCAN_FWD_STATES")
    states = int(forced) if forced else 2
    states = states if n_state % states == 0 else 1
    if device.type != "cuda" or os.environ.get("TRITON_INTERPRET", "0") == "1":
        return states, {}
    if states == 2:
        return states, {"maxnreg": 128}
    sms = sm_count(device)
    if programs <= 5 * sms:
        return states, {}
    return states, {"maxnreg": 64 if programs <= 8 * sms else 80}


def forward_kind(batch: int, dim: int, L: int, B: torch.Tensor, C: torch.Tensor, n_state: int,
                 device: torch.device, backward: bool = False) -> str:
    """Which forward a real-A call runs: "rows" (`fused_rows`) or "fused" (`_fwd_kernel`); B, C as passed to the
    kernels ((batch, G, N, L), or (dim, N) when constant). backward: a backward will follow. Then the rows forward
    also where the backward of 2 channels per program splits L but `fused`'s forward does not: behind `fused`, whose
    saves every 256 tokens slow it, the backward keeps 1 channel (`bwd_channels`). On an H100 at 1 × 512 × 2^20
    fwd+bwd took 38.3 ms so against 41.2 (the forward alone 9.8 against 9.3; BENCHMARKS.md)."""
    splits = splits_l(batch * dim, device) or (backward and dim % 2 == 0 and pairs_split(batch, dim, device))
    return "rows" if use_rows(batch, dim, L, B, C, n_state, splits) else "fused"


def _forward(u, delta, z, A32, B, C, D32, bias32, h0, softplus: bool, save_pre: bool, groups: int, save_t: int):
    """The forward of `_fwd_kernel` (summary pass first when L is split): out, the pre-gate output (or None) and the
    states at the backward's tile starts (every save_t tokens) h_start (batch, dim, n_bwd_tiles + 1, N) fp32, the last
    state in the last entry."""
    batch, dim, L = u.shape
    n_state = A32.shape[1]
    plan = _plan("fwd", batch, dim, L, u.device)
    states, options = _fwd_shape(batch * dim * plan[4], n_state, u.device)
    stages = 1
    if states == 2 and plan[0] // 2 >= save_t:  # half the tokens on half the warps: as many tokens per thread
        plan = plan_tiles(plan[0] // 2, max(plan[1] // 2, 1), SHAPES, batch * dim, L, u.device)
        stages = FWD_STAGES_HALF_TILES
    block_t, warps, n_tiles, tiles_per_chunk, n_chunks = plan
    assert block_t % save_t == 0, "the backward's tiles must divide the forward's"
    n_saves = cdiv(L, save_t) + 1
    f32 = dict(device=u.device, dtype=torch.float32)
    out = torch.empty_like(u)
    pre = torch.empty_like(u) if save_pre else None  # the output before the z gate, for dz
    h_start = torch.empty(batch, dim, n_saves, n_state, **f32)  # the backward's tile starts, then the last state
    dummy = A32  # any fp32 tensor, for the pointers of absent options
    chunk_sum, chunk_dt = summary_buffers(batch, dim, n_chunks, n_state, dummy)
    args = (u, delta, z if z is not None else u, A32, B, C, D32 if D32 is not None else dummy,
            bias32 if bias32 is not None else dummy, h0 if h0 is not None else dummy, out,
            pre if pre is not None else out, h_start,
            chunk_sum, chunk_dt, dim, L, n_state, groups, dim // groups, n_tiles, tiles_per_chunk, n_saves)
    flags = dict(B_CONST=B.dim() == 2, C_CONST=C.dim() == 2, HAS_D=D32 is not None, HAS_Z=z is not None,
                 HAS_BIAS=bias32 is not None, SOFTPLUS=softplus, HAS_H0=h0 is not None, SAVE_PRE=save_pre,
                 BLOCK_N=next_power_of_2(n_state), BLOCK_T=block_t, SAVE_T=save_t, num_warps=warps, STATES=states,
                 PER_THREAD=tokens_per_thread(block_t, warps, u.element_size()), EVEN_L=L % block_t == 0,
                 STAGES=stages, **options)
    grid = (batch, dim, n_chunks)
    launch_passes(_fwd_kernel, grid, args, flags)
    return out, pre, h_start


class _FusedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, softplus: bool, groups: int,
                needs_grad: bool, keep_last: bool):
        batch, dim, L = u.shape
        n_state = A.shape[1]
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None: no zeros to make and read
        ctx.bc_shapes = (B.shape, C.shape)
        u, delta = u.contiguous(), delta.contiguous()
        z = z.contiguous() if z is not None else None
        A32 = cast(A, torch.float32)
        B, C = (grouped(X.contiguous()) if X.dim() > 2 else cast(X, torch.float32) for X in (B, C))
        D32 = cast(D, torch.float32) if D is not None else None
        bias32 = cast(delta_bias, torch.float32) if delta_bias is not None else None
        h0 = cast(initial_state, torch.float32) if initial_state is not None else None
        # either forward saves the state at the backward's tiles, whose channels per program are chosen here
        rows = forward_kind(batch, dim, L, B, C, n_state, u.device, needs_grad) == "rows"
        save_pre = z is not None and needs_grad  # the output before the z gate, for dz
        channels = bwd_channels(batch, dim, groups, B, C, u.device, rows)
        save_t = _plan("bwd", batch, dim, L, u.device, channels)[0]
        if rows:
            out, pre, h_start = rows_forward(u, delta, z, A32, B, C, D32, bias32, h0, softplus, save_pre, save_t)
        else:
            out, pre, h_start = _forward(u, delta, z, A32, B, C, D32, bias32, h0, softplus, save_pre, groups, save_t)
        ctx.save_for_backward(u, delta, z, pre, A32, B, C, D32, bias32, h_start)
        ctx.meta = (softplus, groups, channels)
        ctx.input_meta = (A.dtype, D is not None and D.dtype, delta_bias is not None and delta_bias.dtype,
                          initial_state is not None)
        # the last state: a copy when the caller keeps it (a view would tie it to the saved states), else a view
        return out, h_start[:, :, -1].clone() if keep_last else h_start[:, :, -1]

    @staticmethod
    def backward(ctx, dout, dh_last):
        u, delta, z, pre, A32, B, C, D32, bias32, h_start = ctx.saved_tensors
        softplus, groups, channels = ctx.meta
        A_dtype, D_dtype, bias_dtype, has_h0 = ctx.input_meta
        batch, dim, L = u.shape
        n_state = A32.shape[1]
        block_t, warps, n_tiles, tiles_per_chunk, n_chunks = _plan("bwd", batch, dim, L, u.device, channels)
        assert n_tiles + 1 == h_start.shape[2], "the forward saves the state at every start of the backward's tiles"
        f32 = dict(device=u.device, dtype=torch.float32)
        per_chunk = (batch, dim, n_chunks, n_state)
        dout = dout.contiguous() if dout is not None else torch.zeros_like(u)  # None: only the last state was used
        # du, dΔ, dz in the inputs' dtypes, written once by the kernel (fp32 inside)
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)
        dz = torch.empty_like(z) if z is not None else None
        dA, dB, dC = zeroed((per_chunk, bc_grad_shape(B, per_chunk), bc_grad_shape(C, per_chunk)), f32)
        dD = torch.empty(batch, dim, n_chunks, **f32) if D32 is not None else None
        dbias = torch.empty(batch, dim, n_chunks, **f32) if bias32 is not None else None
        nu = torch.empty(per_chunk, **f32)  # ν at each chunk start (chunk 0's is ∂L/∂h0)
        dummy = nu
        chunk_sum, chunk_dt = summary_buffers(batch, dim, n_chunks, n_state, dummy)
        args = (u, delta, z if z is not None else u, pre if pre is not None else u, A32, B, C,
                D32 if D32 is not None else dummy,
                bias32 if bias32 is not None else dummy, h_start, dout,
                dh_last.contiguous() if dh_last is not None else dummy, chunk_sum, chunk_dt, nu,
                du, ddelta, dz if dz is not None else du, dA, dB, dC,
                dD if dD is not None else dummy, dbias if dbias is not None else dummy,
                dim, L, n_state, groups, dim // groups, n_tiles, tiles_per_chunk)
        flags = dict(B_CONST=B.dim() == 2, C_CONST=C.dim() == 2, HAS_D=D32 is not None, HAS_Z=z is not None,
                     HAS_BIAS=bias32 is not None, SOFTPLUS=softplus, HAS_DHLAST=dh_last is not None,
                     PTX=os.environ.get("TRITON_INTERPRET", "0") != "1",
                     BLOCK_C=channels, BLOCK_N=next_power_of_2(n_state), BLOCK_T=block_t, num_warps=warps,
                     PER_THREAD=tokens_per_thread(block_t, warps, u.element_size()), WARPS=warps,
                     EVEN_L=L % block_t == 0 and channels == 1)
        grid = (batch, dim // channels, n_chunks)
        launch_passes(_bwd_kernel, grid, args, flags)
        dB, dC = (sum_rows_chunks(dX) if len(shape) == 2 else dX.view(shape)  # constant (dim, N), or as passed
                  for dX, shape in zip((dB, dC), ctx.bc_shapes))
        return (du, ddelta, cast(sum_rows_chunks(dA), A_dtype), cast(dB, B.dtype), cast(dC, C.dtype),
                cast(sum_rows_chunks(dD), D_dtype) if dD is not None else None, dz,
                cast(sum_rows_chunks(dbias), bias_dtype) if dbias is not None else None,
                nu[:, :, 0] if has_h0 else None, None, None, None, None)


def selective_scan_fused(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         initial_state=None, return_last_state=False):
    """Selective scan with the fused Triton kernels (CUDA tensors, or any device under TRITON_INTERPRET=1); same
    signature and semantics as `selective_scan`, real or complex A."""
    groups = check_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    if A.is_complex():
        out, h_last = _FusedScanComplex.apply(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                                              groups)
    else:  # whether a backward can follow: it picks the forward, and whether it keeps the output before the gate
        needs_grad = torch.is_grad_enabled() and any(
            x is not None and x.requires_grad for x in (u, delta, A, B, C, D, z, delta_bias, initial_state))
        out, h_last = _FusedScan.apply(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, groups,
                                       needs_grad, return_last_state)
    return (out, h_last) if return_last_state else out
