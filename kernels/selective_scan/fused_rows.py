"""Selective scan with channels as tile rows (real A, variable B/C of one group): a forward, and an opt-in backward.

Layout. A program owns BLOCK_D channels of one batch row and walks its chunk of L in tiles of Q = 16 tokens: a tile
is [BLOCK_D channels, Q tokens], each thread holding 8 consecutive tokens of one channel, so the scan along the tokens
is in-thread but for one shuffle. The N states are a loop unrolled at compile time; the state carried from tile to
tile lives in registers, in two [BLOCK_D, Q] tiles whose column n is state n (states 0 … Q−1) and n − Q (Q … 2Q−1).
The output is a running sum over the states, as in `fused`. The next tile's u and Δ are loaded one tile ahead, and
the tile loop is software-pipelined (`num_stages`, B and C through shared memory); without both the kernel waited on
memory at every tile (1.2–1.7× slower).

Where it wins. Per program the work is serial over L, so a program has little to do in parallel; the kernel fills
the GPU when batch·dim is large (batch 8 × 2048 channels: one chunk, 2.04 ms against 2.42 ms for `fused` at
L = 8192), or by splitting L into chunks (the summary pass of `fused`, which costs a second exp per element), which
pays only where `fused` itself splits (batch 1 × 256 channels at L = 2^20: 6.0 against 9.4 ms). Where neither holds
(batch 1 × 1024 at L = 2^15, batch 4 × 1536 at 2^16) `fused` was 9–21% faster (H100, BENCHMARKS.md; timed with the
experiment version of this loop, before the saved states were added); `use_rows` encodes that rule.

It writes what the backward of `fused` reads: the state at every start of the backward's tiles (BLOCK_T tokens; the
chunks of L are whole numbers of those tiles), the last state, and the output before the z gate.

Opt-in backward in the same layout (MBA_SCAN_ROWS_BWD=1 with the rows forward). The forward then saves the state at
every start of the backward's tiles (BWD_SHAPE: 64 tokens, so N·4/64 bytes per token and channel, 1 byte at N = 16,
against 1/16 for `fused`'s tiles of 1024), and the backward needs no forward recompute: per tile, from last to first,
h by a scan from the saved start, the adjoint λ by a reverse scan, two exps per element as in `fused`; dB and dC are
summed over the block's channels before the atomic add (`fused` adds per channel). L is split into chunks as in the
forward when the programs cannot fill the GPU (a summary pass first: ν at each chunk start from a zero carry). Correct
against the float64 loop; not yet timed on a GPU, so not the default: `make bench` times it next to `fused`'s.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .triton_tiles import LOG2E, REVERSE_SEG, _combine, _delta, _mul_rn, _reverse_scan, _store_output

Q = 16          # forward: tokens per tile, 8 per thread, 2 threads per channel
BLOCK_D = 32    # forward: channels per program (2 warps)
WARPS = 2
# backward: tokens per tile (the forward saves the state at every tile start), channels per program, warps, and
# whether dB/dC are summed over the program's channels before the atomic add
BWD_SHAPE = (64, 16, 4, True)
STAGES = 3      # software pipelining of the tile loops
SPLIT_TARGET_THREADS = 128 * 132 * 4  # when splitting L: about 16 warps per SM of an H100


def _n_chunks(threads: int, n_units: int) -> int:
    """Chunks of L for a pass whose programs hold `threads` threads in all without a split: one when they fill the
    GPU, else enough for SPLIT_TARGET_THREADS; at most n_units (the indivisible tiles)."""
    n_chunks = 1 if threads >= SPLIT_TARGET_THREADS // 4 else triton.cdiv(SPLIT_TARGET_THREADS, threads)
    return max(1, min(n_chunks, n_units))


@triton.jit
def _column(X, cols, n: tl.constexpr, Q: tl.constexpr, X2):
    """Column n of the state tiles (X holds states 0 … Q−1, X2 states Q … 2Q−1) as [BD, 1]."""
    if n < Q:
        return tl.sum(tl.where(cols == n, X, 0.0), axis=1)[:, None]
    else:
        return tl.sum(tl.where(cols == n - Q, X2, 0.0), axis=1)[:, None]


@triton.jit
def _set_column(X, X2, cols, n: tl.constexpr, Q: tl.constexpr, value):
    """The state tiles (X, X2) with column n set to value [BD, 1]."""
    if n < Q:
        X = tl.where(cols == n, value, X)
    else:
        X2 = tl.where(cols == n - Q, value, X2)
    return X, X2


@triton.jit
def _scan_from(H, H2, cols, a, x, n: tl.constexpr, Q: tl.constexpr):
    """h_t [BD, Q] of state n over one tile: the steps (a, x) from the carried state, column n of (H, H2)."""
    x = tl.where(cols == 0, x + a * _column(H, cols, n, Q, H2), x)                  # the carried state enters
    _, h = tl.associative_scan((a, x), axis=1, combine_fn=_combine)
    return h


@triton.jit
def _last(h, cols, Q: tl.constexpr):
    """The tile's last h, [BD, 1]."""
    return tl.sum(tl.where(cols == Q - 1, h, 0.0), axis=1)[:, None]


@triton.jit
def _rows_fwd_kernel(u_ptr, dt_ptr, z_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, h0_ptr, out_ptr, pre_ptr,
                     hstart_ptr, sum_ptr, dtsum_ptr, dim, L, n_tiles, tiles_per_chunk, n_saves,
                     N: tl.constexpr, BLOCK_D: tl.constexpr, Q: tl.constexpr, SAVE_EVERY: tl.constexpr,
                     HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                     HAS_H0: tl.constexpr, SAVE_PRE: tl.constexpr, SUMMARY: tl.constexpr, STAGES: tl.constexpr):
    """One (batch row, block of channels, chunk of L). SUMMARY: the chunk's end state from zero and its ΣΔ.
    Otherwise: outputs, the state at every SAVE_EVERY-th tile boundary (entry e of hstart: the state after e·SAVE_EVERY
    tiles; entry n_saves − 1: the last state) and with SAVE_PRE the output before the z gate."""
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)[:, None]          # [BD, 1] channels
    chunk = tl.program_id(2)
    n_chunks = tl.num_programs(2)
    row = b * dim + d                                                          # [BD, 1] int64
    q = tl.arange(0, Q)[None, :]                                               # [1, Q]
    cols = q + 0 * d                                                           # [BD, Q]: column n is state n (or n + Q)
    mask_d = d < dim
    lo = mask_d & (cols < N)
    hi = mask_d & (cols + Q < N)
    bias = tl.load(bias_ptr + d, mask=mask_d, other=0.0) if HAS_BIAS else 0.0
    Dv = tl.load(D_ptr + d, mask=mask_d, other=0.0) if HAS_D else 0.0
    if HAS_H0 and not SUMMARY:
        H = tl.load(h0_ptr + row * N + cols, mask=lo, other=0.0)                # states 0 … Q−1
        H2 = tl.load(h0_ptr + row * N + Q + cols, mask=hi, other=0.0)           # states Q … 2Q−1
    else:
        H = tl.zeros([BLOCK_D, Q], tl.float32)
        H2 = tl.zeros([BLOCK_D, Q], tl.float32)
    if not SUMMARY:  # fold the summaries of the chunks before this one: H ← exp(A·ΣΔ_c)·H + s_c
        A2 = tl.load(A_ptr + d * N + cols, mask=lo, other=0.0) * LOG2E
        A2h = tl.load(A_ptr + d * N + Q + cols, mask=hi, other=0.0) * LOG2E
        for j in range(0, chunk):
            S = tl.load(dtsum_ptr + row * n_chunks + j, mask=mask_d, other=0.0)
            s_ptr = sum_ptr + (row * n_chunks + j) * N + cols
            H = tl.exp2(A2 * S) * H + tl.load(s_ptr, mask=lo, other=0.0)
            H2 = tl.exp2(A2h * S) * H2 + tl.load(s_ptr + Q, mask=hi, other=0.0)
    k0 = chunk * tiles_per_chunk
    k1 = tl.minimum(k0 + tiles_per_chunk, n_tiles)
    if not SUMMARY and chunk == 0:
        tl.store(hstart_ptr + row * n_saves * N + cols, H, mask=lo)
        tl.store(hstart_ptr + row * n_saves * N + Q + cols, H2, mask=hi)
    dt_sum = tl.zeros([BLOCK_D, 1], tl.float32)
    t = k0 * Q + q
    m = mask_d & (t < L)
    u_next = tl.load(u_ptr + row * L + t, mask=m, other=0.0)
    dt_next = tl.load(dt_ptr + row * L + t, mask=m, other=0.0)
    for k in tl.range(k0, k1, num_stages=STAGES):
        t = k * Q + q
        m = mask_d & (t < L)
        u = u_next.to(tl.float32)
        raw = dt_next
        m_next = mask_d & (t + Q < L) & (k + 1 < k1)  # the next tile's u and Δ load while this one computes
        u_next = tl.load(u_ptr + row * L + t + Q, mask=m_next, other=0.0)
        dt_next = tl.load(dt_ptr + row * L + t + Q, mask=m_next, other=0.0)
        dt = _delta(raw, bias, m, HAS_BIAS, SOFTPLUS)                          # padding: identity steps
        dtu = dt * u
        y = Dv * u
        if SUMMARY:
            dt_sum += tl.sum(dt, axis=1)[:, None]
        for n in tl.static_range(N):
            A2n = tl.load(A_ptr + d * N + n, mask=mask_d, other=0.0) * LOG2E                   # [BD, 1]
            Bn = tl.load(B_ptr + (b * N + n) * L + t, mask=t < L, other=0.0)                 # [1, Q] fp32
            h = _scan_from(H, H2, cols, tl.exp2(dt * A2n), dtu * Bn, n, Q)
            if not SUMMARY:
                y += h * tl.load(C_ptr + (b * N + n) * L + t, mask=t < L, other=0.0)
            H, H2 = _set_column(H, H2, cols, n, Q, _last(h, cols, Q))
        if not SUMMARY:
            _store_output(out_ptr, pre_ptr, z_ptr, row * L + t, y, m, HAS_Z, SAVE_PRE)
            save = ((k + 1) % SAVE_EVERY == 0) | (k + 1 == n_tiles)  # a masked store keeps the loop branch-free
            e = (k + SAVE_EVERY) // SAVE_EVERY                                       # ⌈(k + 1) / SAVE_EVERY⌉
            tl.store(hstart_ptr + (row * n_saves + e) * N + cols, H, mask=lo & save)
            tl.store(hstart_ptr + (row * n_saves + e) * N + Q + cols, H2, mask=hi & save)
    if SUMMARY:
        tl.store(sum_ptr + (row * n_chunks + chunk) * N + cols, H, mask=lo)
        tl.store(sum_ptr + (row * n_chunks + chunk) * N + Q + cols, H2, mask=hi)
        tl.store(dtsum_ptr + row * n_chunks + chunk + 0 * d, dt_sum, mask=mask_d)


def use_rows(batch: int, dim: int, L: int, B: torch.Tensor, C: torch.Tensor, n_state: int, fused_splits: bool) -> bool:
    """Whether the rows forward beats `fused` here (H100 sweep, BENCHMARKS.md): when batch·dim fills the GPU without
    splitting L (a quarter of SPLIT_TARGET_THREADS), or when `fused` would split L itself (`fused_splits`). Only for
    variable B and C of one group, N ≤ 2Q and L ≥ 1024. MBA_SCAN_ROWS=1 or 0 forces the choice."""
    if B.dim() != 4 or C.dim() != 4 or B.shape[1] != 1 or C.shape[1] != 1 or n_state > 2 * Q:
        return False
    forced = os.environ.get("MBA_SCAN_ROWS")
    if forced in ("0", "1"):
        return forced == "1"
    return L >= 1024 and (batch * dim * (Q // 8) >= SPLIT_TARGET_THREADS // 4 or fused_splits)


def rows_forward(u, delta, z, A32, B, C, D32, bias32, h0, softplus: bool, save_pre: bool, block_t: int):
    """u, delta, z (batch, dim, L) any float dtype; A32 (dim, N) fp32; B, C (batch, 1, N, L); D32, bias32 (dim,) fp32 or
    None; h0 (batch, dim, N) fp32 or None. block_t: the backward's tile (tokens), a multiple of Q.
    Returns out (batch, dim, L) in u's dtype, the pre-gate output (or None) and h_start (batch, dim, ⌈L/block_t⌉ + 1,
    N) fp32 (the state at each backward tile start, then the last state)."""
    batch, dim, L = u.shape
    n_state = A32.shape[1]
    assert block_t % Q == 0, "the backward's tiles must be whole tiles of the forward"
    save_every = block_t // Q
    n_tiles = triton.cdiv(L, Q)
    n_saves = triton.cdiv(L, block_t) + 1
    n_chunks = _n_chunks(batch * dim * (Q // 8), n_saves - 1)
    tiles_per_chunk = triton.cdiv(triton.cdiv(n_tiles, n_chunks), save_every) * save_every  # whole backward tiles
    n_chunks = triton.cdiv(n_tiles, tiles_per_chunk)
    f32 = dict(device=u.device, dtype=torch.float32)
    B32, C32 = B.float().contiguous(), C.float().contiguous()  # converted once here, not by every channel's program
    out = torch.empty_like(u)
    pre = torch.empty_like(u) if save_pre else None
    h_start = torch.empty(batch, dim, n_saves, n_state, **f32)
    chunk_sum = torch.empty(batch, dim, n_chunks, n_state, **f32)
    chunk_dt = torch.empty(batch, dim, n_chunks, **f32)
    dummy = chunk_dt
    args = (u, delta, z if z is not None else u, A32, B32, C32, D32 if D32 is not None else dummy,
            bias32 if bias32 is not None else dummy, h0 if h0 is not None else dummy, out,
            pre if pre is not None else out, h_start, chunk_sum, chunk_dt, dim, L, n_tiles, tiles_per_chunk, n_saves)
    flags = dict(N=n_state, BLOCK_D=BLOCK_D, Q=Q, SAVE_EVERY=save_every, HAS_D=D32 is not None, HAS_Z=z is not None,
                 HAS_BIAS=bias32 is not None, SOFTPLUS=softplus, HAS_H0=h0 is not None, SAVE_PRE=save_pre,
                 STAGES=STAGES, num_warps=WARPS)
    grid = (batch, triton.cdiv(dim, BLOCK_D), n_chunks)
    if n_chunks > 1:
        _rows_fwd_kernel[grid](*args, SUMMARY=True, **flags)
    _rows_fwd_kernel[grid](*args, SUMMARY=False, **flags)
    return out, pre, h_start


@triton.jit
def _rows_bwd_kernel(u_ptr, dt_ptr, z_ptr, pre_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, hstart_ptr, dout_ptr,
                     dhlast_ptr, sum_ptr, dtsum_ptr, du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
                     nu_ptr, dim, L, n_tiles, tiles_per_chunk,
                     N: tl.constexpr, BLOCK_D: tl.constexpr, QB: tl.constexpr, HAS_D: tl.constexpr,
                     HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_DHLAST: tl.constexpr,
                     SUMMARY: tl.constexpr, SUM_BC: tl.constexpr, PTX: tl.constexpr, STAGES: tl.constexpr):
    """One (batch row, block of BLOCK_D channels, chunk of L), its tiles of QB tokens from last to first; the state at
    every tile start comes from the forward (hstart entry k: the state before tile k).
    SUMMARY: ν at the chunk start from a zero carry, Σ_t exp(A·S_t)·g_t·C_t (S_t: Δ summed from the chunk start
    through t), and the chunk's ΣΔ. Otherwise: the carry ν entering after the chunk (dh_last folded with the summaries
    of the chunks after it); per tile, h_t by a scan from the saved start, λ_t = g_t·C_t + a_{t+1}·λ_{t+1} by a
    reverse scan with the carry ν = a·λ at the next tile's start; du, dΔ (raw delta), dz per token; dB, dC added
    atomically (SUM_BC: summed over the block's channels first); dA, dD, dbias and ν at the chunk start per (batch
    row, channel, chunk)."""
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)[:, None]          # [BD, 1]
    chunk = tl.program_id(2)
    n_chunks = tl.num_programs(2)
    row = b * dim + d
    q = tl.arange(0, QB)[None, :]
    cols = q + 0 * d                                                           # [BD, QB]: column n is state n
    mask_d = d < dim
    lo = mask_d & (cols < N)
    bias = tl.load(bias_ptr + d, mask=mask_d, other=0.0) if HAS_BIAS else 0.0
    Dv = tl.load(D_ptr + d, mask=mask_d, other=0.0) if HAS_D else 0.0
    per_chunk = (row * n_chunks + chunk) * N + cols
    if HAS_DHLAST and not SUMMARY:
        NU = tl.load(dhlast_ptr + row * N + cols, mask=lo, other=0.0)        # ν entering after the last token
    else:
        NU = tl.zeros([BLOCK_D, QB], tl.float32)
    if not SUMMARY:  # fold the summaries of the chunks after this one, last first: ν ← exp(A·ΣΔ_c)·ν + s_c
        A2 = tl.load(A_ptr + d * N + cols, mask=lo, other=0.0) * LOG2E
        for j in range(0, n_chunks - 1 - chunk):
            c = n_chunks - 1 - j
            S = tl.load(dtsum_ptr + row * n_chunks + c, mask=mask_d, other=0.0)
            NU = tl.exp2(A2 * S) * NU + tl.load(sum_ptr + (row * n_chunks + c) * N + cols, mask=lo, other=0.0)
    dA = tl.zeros([BLOCK_D, QB], tl.float32)
    dD = tl.zeros([BLOCK_D, 1], tl.float32)
    dbias = tl.zeros([BLOCK_D, 1], tl.float32)
    dt_sum = tl.zeros([BLOCK_D, 1], tl.float32)
    k0 = chunk * tiles_per_chunk
    k1 = tl.minimum(k0 + tiles_per_chunk, n_tiles)
    t = (k1 - 1) * QB + q                       # the last tile's per-token inputs; each tile loads the next one's
    m = mask_d & (t < L)
    u_next = tl.load(u_ptr + row * L + t, mask=m, other=0.0)
    raw_next = tl.load(dt_ptr + row * L + t, mask=m, other=0.0)
    g_next = tl.load(dout_ptr + row * L + t, mask=m, other=0.0)
    for jk in tl.range(0, k1 - k0, num_stages=STAGES):
        k = k1 - 1 - jk
        t = k * QB + q
        m = mask_d & (t < L)
        io = row * L + t
        u = u_next.to(tl.float32)
        raw = raw_next
        g = g_next.to(tl.float32)
        m_next = mask_d & (t >= QB) & (k > k0)                                # tile k − 1 loads while k computes
        u_next = tl.load(u_ptr + io - QB, mask=m_next, other=0.0)
        raw_next = tl.load(dt_ptr + io - QB, mask=m_next, other=0.0)
        g_next = tl.load(dout_ptr + io - QB, mask=m_next, other=0.0)
        dt = _delta(raw, bias, m, HAS_BIAS, SOFTPLUS)
        if HAS_Z:
            z = tl.load(z_ptr + io, mask=m, other=0.0).to(tl.float32)
            sig = tl.sigmoid(z)
            if not SUMMARY:
                pre = tl.load(pre_ptr + io, mask=m, other=0.0).to(tl.float32)
                tl.store(dz_ptr + io, (g * pre * sig * (1.0 + z * (1.0 - sig))).to(dz_ptr.dtype.element_ty), mask=m)
            g = g * z * sig                                                    # ∂L/∂(y + D·u)
        if SUMMARY:  # ν_{t0} = Σ_t exp(A·Σ_{r≤t} Δ_r)·g_t·C_t + exp(A·ΣΔ)·ν_{t1}: no scan, one exp per element
            S = tl.cumsum(dt, axis=1)
            S_tile = tl.sum(dt, axis=1)[:, None]
            dt_sum += S_tile
            for n in range(N):
                A2n = tl.load(A_ptr + d * N + n, mask=mask_d, other=0.0) * LOG2E
                Cn = tl.load(C_ptr + (b * N + n) * L + t, mask=t < L, other=0.0)
                inside = tl.sum(tl.exp2(A2n * S) * g * Cn, axis=1)[:, None]
                NU = tl.where(cols == n, tl.exp2(A2n * S_tile) * NU + inside, NU)
        else:
            m_ahead = mask_d & (cols < QB - 1) & (t + 1 < L)                  # a_{t+1}; 1 at the tile's end
            dt_ahead = _delta(tl.load(dt_ptr + io + 1, mask=m_ahead, other=0.0), bias, m_ahead, HAS_BIAS, SOFTPLUS)
            dtu = dt * u
            lam_B = tl.zeros([BLOCK_D, QB], tl.float32)                       # Σ_n λ·B
            lam_AhA = tl.zeros([BLOCK_D, QB], tl.float32)                     # Σ_n λ·a·h_{t−1}·A
            for n in range(N):  # a loop: unrolled (sm_90) it took 255 registers and spilled
                An = tl.load(A_ptr + d * N + n, mask=mask_d, other=0.0)       # [BD, 1]
                A2n = An * LOG2E
                Bn = tl.load(B_ptr + (b * N + n) * L + t, mask=t < L, other=0.0)  # [1, QB] fp32
                Cn = tl.load(C_ptr + (b * N + n) * L + t, mask=t < L, other=0.0)
                h_in = tl.load(hstart_ptr + (row * (n_tiles + 1) + k) * N + n, mask=mask_d, other=0.0)
                a = tl.exp2(dt * A2n)
                x = _mul_rn(dtu, Bn, PTX)  # not fused into h − x below: exact 0 where h_{t−1} = 0
                a_cum, x_cum = tl.associative_scan((a, x), axis=1, combine_fn=_combine)
                h = a_cum * h_in + x_cum                                       # h_t
                p_cum, lam = _reverse_scan(tl.exp2(dt_ahead * A2n), g * Cn, REVERSE_SEG)
                lam += p_cum * tl.sum(tl.where(cols == n, NU, 0.0), axis=1)[:, None]  # λ_t
                lam_B += lam * Bn
                dP = lam * (h - x)                                             # λ·a_t·h_{t−1} = ∂(Δ·A)
                lam_AhA += dP * An
                dA = tl.where(cols == n, dA + tl.sum(dP * dt, axis=1)[:, None], dA)
                NU = tl.where(cols == n, tl.sum(tl.where(cols == 0, a * lam, 0.0), axis=1)[:, None], NU)
                if SUM_BC:  # one atomic add per token and state for the block's channels
                    tl.atomic_add(dB_ptr + (b * N + n) * L + t, tl.sum(lam * dtu, axis=0)[None, :], mask=t < L,
                                  sem="relaxed")
                    tl.atomic_add(dC_ptr + (b * N + n) * L + t, tl.sum(h * g, axis=0)[None, :], mask=t < L,
                                  sem="relaxed")
                else:  # one per channel, as in `fused`: no reduction across threads
                    tl.atomic_add(dB_ptr + (b * N + n) * L + t + 0 * d, lam * dtu, mask=m, sem="relaxed")
                    tl.atomic_add(dC_ptr + (b * N + n) * L + t + 0 * d, h * g, mask=m, sem="relaxed")
            tl.store(du_ptr + io, (lam_B * dt + Dv * g).to(du_ptr.dtype.element_ty), mask=m)
            ddt = lam_B * u + lam_AhA
            if SOFTPLUS:
                ddt = ddt * tl.sigmoid(raw.to(tl.float32) + bias)
            ddt = tl.where(m, ddt, 0.0)
            tl.store(ddt_ptr + io, ddt.to(ddt_ptr.dtype.element_ty), mask=m)
            dD += tl.sum(g * u, axis=1)[:, None]
            dbias += tl.sum(ddt, axis=1)[:, None]
    if SUMMARY:
        tl.store(sum_ptr + per_chunk, NU, mask=lo)
        tl.store(dtsum_ptr + row * n_chunks + chunk + 0 * d, dt_sum, mask=mask_d)
    else:
        tl.store(dA_ptr + per_chunk, dA, mask=lo)
        tl.store(nu_ptr + per_chunk, NU, mask=lo)
        if HAS_D:
            tl.store(dD_ptr + row * n_chunks + chunk + 0 * d, dD, mask=mask_d)
        if HAS_BIAS:
            tl.store(dbias_ptr + row * n_chunks + chunk + 0 * d, dbias, mask=mask_d)


def rows_backward(u, delta, z, pre, A32, B, C, D32, bias32, h_start, dout, dh_last, softplus: bool):
    """The backward in the rows layout, after `rows_forward(..., block_t=BWD_TOKENS)`. Shapes as in rows_forward;
    h_start (batch, dim, ⌈L/BWD_TOKENS⌉ + 1, N) from it. Returns du, ddelta, dz (inputs' dtypes), dA (dim, N), dB, dC
    (batch, 1, N, L) fp32, dD, dbias (dim,) fp32 or None, dh0 (batch, dim, N) fp32."""
    batch, dim, L = u.shape
    n_state = A32.shape[1]
    qb, block_d, warps, sum_bc = BWD_SHAPE
    n_tiles = triton.cdiv(L, qb)
    assert h_start.shape[2] == n_tiles + 1, "the rows backward needs the forward's state at each of its tile starts"
    assert n_state <= qb, "the rows backward carries the states in one [channels, tokens] tile"
    n_chunks = _n_chunks(batch * triton.cdiv(dim, block_d) * block_d * (qb // 8), n_tiles)
    tiles_per_chunk = triton.cdiv(n_tiles, n_chunks)
    n_chunks = triton.cdiv(n_tiles, tiles_per_chunk)
    f32 = dict(device=u.device, dtype=torch.float32)
    per_chunk = (batch, dim, n_chunks, n_state)
    B32, C32 = B.float().contiguous(), C.float().contiguous()
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else None
    dA = torch.empty(per_chunk, **f32)
    dB = torch.zeros(B.shape, **f32)
    dC = torch.zeros(C.shape, **f32)
    dD = torch.empty(batch, dim, n_chunks, **f32)
    dbias = torch.empty(batch, dim, n_chunks, **f32)
    nu = torch.empty(per_chunk, **f32)  # ν at each chunk start (chunk 0's is ∂L/∂h0)
    chunk_sum = torch.empty(per_chunk, **f32)
    chunk_dt = torch.empty(batch, dim, n_chunks, **f32)
    dummy = nu
    args = (u, delta, z if z is not None else u, pre if pre is not None else u, A32, B32, C32,
            D32 if D32 is not None else dummy, bias32 if bias32 is not None else dummy, h_start, dout.contiguous(),
            dh_last.contiguous() if dh_last is not None else dummy, chunk_sum, chunk_dt, du, ddelta,
            dz if dz is not None else du, dA, dB, dC, dD, dbias, nu, dim, L, n_tiles, tiles_per_chunk)
    flags = dict(N=n_state, BLOCK_D=block_d, QB=qb, HAS_D=D32 is not None, HAS_Z=z is not None,
                 HAS_BIAS=bias32 is not None, SOFTPLUS=softplus, HAS_DHLAST=dh_last is not None, SUM_BC=sum_bc,
                 PTX=os.environ.get("TRITON_INTERPRET", "0") != "1", STAGES=STAGES, num_warps=warps)
    grid = (batch, triton.cdiv(dim, block_d), n_chunks)
    if n_chunks > 1:
        _rows_bwd_kernel[grid](*args, SUMMARY=True, **flags)
    _rows_bwd_kernel[grid](*args, SUMMARY=False, **flags)
    return (du, ddelta, dz, dA.sum((0, 2)), dB, dC, dD.sum((0, 2)) if D32 is not None else None,
            dbias.sum((0, 2)) if bias32 is not None else None, nu[:, :, 0])
