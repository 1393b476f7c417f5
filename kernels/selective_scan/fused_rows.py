"""Selective scan with channels as tile rows (real A, variable B/C of one group): a forward for `fused`'s backward.

Layout. A program owns BLOCK_D channels of one batch row and walks its chunk of L in tiles of Q = 16 tokens: a tile
is [BLOCK_D channels, Q tokens], each thread holding SLOT = 8 consecutive tokens of one channel, so the scan along the
tokens is in-thread but for one shuffle (`_scan_from`). The N states are a loop unrolled at compile time; the state
carried from tile to tile lives in registers as a tuple of N [BLOCK_D, 1] values, one per state, and so do A·log2 e.
Packed instead into two [BLOCK_D, Q] tiles (column n state n), every state's read and update went through selects on
the same tiles, which chained the N states of a tile one after the other: as a tuple they are independent, and on an
H100 the forward was 15-22% faster (sm_90: 1,689 → 1,545 loop instructions; BENCHMARKS.md).
The summary pass (L split) does no scan: each thread sums exp(A·Σ_{r>t} Δ_r)·Δ_t·u_t·B_t over its own tokens into one
register per state, decayed tile by tile, and the threads' sums are added once per chunk.
The output is a running sum over the states, as in `fused`. The next tile's u and Δ are loaded one tile ahead, and
the tile loop is software-pipelined (`num_stages`, B and C through shared memory); without both the kernel waited on
memory at every tile (1.2–1.7× slower).

Where it wins. Per program the work is serial over L, so a program has little to do in parallel; the kernel fills
the GPU when batch·dim is large (batch 8 × 2048 channels: one chunk, 1.49 ms against 2.16 ms for `fused` at
L = 8192), or by splitting L into chunks (a summary pass, which costs a second exp per element and 54–76% of a full
pass), which pays only where `fused` itself splits (batch 1 × 256 channels at L = 2^20: 5.06 against 9.81 ms). Where
neither holds `fused` is faster: batch 1 × 1024 at L = 2^19 8.4 against 10.4 ms, batch 4 × 1536 at 2^16 6.7 against
9.0 (7.1 with the best chunk count) (H100, `make bench`, BENCHMARKS.md); `use_rows` encodes that rule. When a
backward follows, its 2-channel programs need the rows forward's saves, so it also runs where only that backward
splits L (1 × 512 × 2^20: fwd+bwd 37.0 against 41.4 ms, though its forward alone is 3% slower).

It writes what the backward of `fused` reads: the state at every start of the backward's tiles (BLOCK_T tokens; the
chunks of L are whole numbers of those tiles), the last state, and the output before the z gate.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ..host import cast, cdiv
from .triton_tiles import LOG2E, _combine, _delta, _replace, _store_output, launch_passes, summary_buffers

Q = 16          # forward: tokens per tile, 8 per thread, 2 threads per channel
SLOT = tl.constexpr(8)  # a thread's tokens (2-byte inputs): the halves of `_scan_from`, the summary's sums
BLOCK_D = 32    # forward: channels per program (2 warps)
WARPS = 2
STAGES = 3      # software pipelining of the tile loops
SPLIT_TARGET_THREADS = 128 * 132 * 4  # when splitting L: about 16 warps per SM of an H100


def _n_chunks(threads: int, n_units: int) -> int:
    """Chunks of L for a pass whose programs hold `threads` threads in all without a split: one when they fill the
    GPU, else enough for SPLIT_TARGET_THREADS; at most n_units (the indivisible tiles)."""
    n_chunks = 1 if threads >= SPLIT_TARGET_THREADS // 4 else cdiv(SPLIT_TARGET_THREADS, threads)
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
def _store_states(ptr, Hs, cols, lo, hi, Q: tl.constexpr):
    """Store the states Hs (N entries [BD, 1]) at ptr + n as two [BD, Q] tiles (states 0 … Q−1, Q … 2Q−1)."""
    H = tl.zeros(cols.shape, tl.float32)
    H2 = tl.zeros(cols.shape, tl.float32)
    for n in tl.static_range(len(Hs)):
        H, H2 = _set_column(H, H2, cols, n, Q, Hs[n])
    tl.store(ptr + cols, H, mask=lo)
    tl.store(ptr + Q + cols, H2, mask=hi)


@triton.jit
def _scan_from(carry, cols, a, x, Q: tl.constexpr):
    """h_t [BD, Q] of one state over one tile: the steps (a, x) from the carried state carry [BD, 1]. Each half
    of the tile (a thread's SLOT tokens) is scanned in its thread, the first from the carried state and the second
    from zero; then the second again from the first's last h. Triton's scan over the whole row instead carries each
    thread's products of a for a fix-up: an FMUL and an FFMA per element where this scans again with one FFMA (for
    sm_90 1,782 → 1,689 loop instructions; on an H100 the forward was 3-4% faster, BENCHMARKS.md)."""
    BD: tl.constexpr = a.shape[0]
    tl.static_assert(Q == 2 * SLOT, "a tile is two threads' SLOT tokens")
    x = tl.where(cols == 0, x + a * carry, x)                                       # the carried state enters
    a3, x3 = tl.reshape(a, [BD, 2, SLOT]), tl.reshape(x, [BD, 2, SLOT])
    _, h3 = tl.associative_scan((a3, x3), axis=2, combine_fn=_combine)
    half, j = tl.arange(0, 2)[None, :, None], tl.arange(0, SLOT)[None, None, :]
    first_last = tl.sum(tl.sum(tl.where((half == 0) & (j == SLOT - 1), h3, 0.0), axis=2, keep_dims=True), axis=1,
                        keep_dims=True)                                                      # [BD, 1, 1]
    x3 = tl.where((half == 1) & (j == 0), x3 + a3 * first_last, x3)
    _, h3 = tl.associative_scan((a3, x3), axis=2, combine_fn=_combine)
    return tl.reshape(h3, [BD, Q])


@triton.jit
def _last(h, cols, Q: tl.constexpr):
    """The tile's last h, [BD, 1]."""
    return tl.sum(tl.where(cols == Q - 1, h, 0.0), axis=1)[:, None]


@triton.jit
def _group_sums(x, Q: tl.constexpr):
    """x [BD, Q] summed over each group of SLOT consecutive tokens (those a thread holds for 2-byte inputs, so that no
    data moves between threads), each token given its group's sum: [BD, Q]."""
    BD: tl.constexpr = x.shape[0]
    G: tl.constexpr = tl.constexpr(Q) // SLOT
    sums = tl.sum(tl.reshape(x, [BD, G, SLOT]), axis=2)
    return tl.reshape(tl.broadcast_to(sums[:, :, None], [BD, G, SLOT]), [BD, Q])


@triton.jit
def _add_to_slot(P0, P1, P2, P3, slots, n: tl.constexpr, decay, part):
    """State n's slot (j = n mod SLOT of tile P_{n // SLOT}) in every group of tokens: P ← decay·P + part."""
    j: tl.constexpr = tl.constexpr(n) % SLOT
    if n < SLOT:
        P0 = tl.where(slots == j, decay * P0 + part, P0)
    elif n < 2 * SLOT:
        P1 = tl.where(slots == j, decay * P1 + part, P1)
    elif n < 3 * SLOT:
        P2 = tl.where(slots == j, decay * P2 + part, P2)
    else:
        P3 = tl.where(slots == j, decay * P3 + part, P3)
    return P0, P1, P2, P3


@triton.jit
def _slot_total(P0, P1, P2, P3, slots, n: tl.constexpr):
    """State n summed over the groups of a row (its slot in each), [BD, 1]."""
    j: tl.constexpr = tl.constexpr(n) % SLOT
    if n < SLOT:
        P = P0
    elif n < 2 * SLOT:
        P = P1
    elif n < 3 * SLOT:
        P = P2
    else:
        P = P3
    return tl.sum(tl.where(slots == j, P, 0.0), axis=1)[:, None]


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
    Hs = ()   # the carried states, N entries [BD, 1]
    A2s = ()  # A·log2 e per state, N entries [BD, 1]
    for n in tl.static_range(N):
        Hs = Hs + (_column(H, cols, n, Q, H2),)
        A2s = A2s + (tl.load(A_ptr + d * N + n, mask=mask_d, other=0.0) * LOG2E,)
    slots = cols % SLOT                      # SUMMARY: slot j of each group of SLOT tokens sums state j (+ SLOT·k)
    P0 = tl.zeros([BLOCK_D, Q], tl.float32)  # states 0 … SLOT−1, SLOT … 2·SLOT−1, …
    P1 = tl.zeros([BLOCK_D, Q], tl.float32)
    P2 = tl.zeros([BLOCK_D, Q], tl.float32)
    P3 = tl.zeros([BLOCK_D, Q], tl.float32)
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
        if SUMMARY:  # no scan: each thread's own sums Σ_t exp(A·Σ_{r>t} Δ_r)·x_t, decayed tile by tile
            S_tile = tl.sum(dt, axis=1)[:, None]                                    # [BD, 1]
            dt_sum += S_tile
            rest = tl.maximum(S_tile - tl.cumsum(dt, axis=1), 0.0)                 # Σ of Δ after t in the tile
            for n in tl.static_range(N):
                Bn = tl.load(B_ptr + (b * N + n) * L + t, mask=t < L, other=0.0)                 # [1, Q] fp32
                part = _group_sums(tl.exp2(A2s[n] * rest) * (dtu * Bn), Q)
                P0, P1, P2, P3 = _add_to_slot(P0, P1, P2, P3, slots, n, tl.exp2(A2s[n] * S_tile), part)
        else:
            y = Dv * u
            for n in tl.static_range(N):
                Bn = tl.load(B_ptr + (b * N + n) * L + t, mask=t < L, other=0.0)                 # [1, Q] fp32
                h = _scan_from(Hs[n], cols, tl.exp2(dt * A2s[n]), dtu * Bn, Q)
                y += h * tl.load(C_ptr + (b * N + n) * L + t, mask=t < L, other=0.0)
                Hs = _replace(Hs, n, _last(h, cols, Q))
            _store_output(out_ptr, pre_ptr, z_ptr, row * L + t, y, m, HAS_Z, SAVE_PRE)
            if ((k + 1) % SAVE_EVERY == 0) | (k + 1 == n_tiles):
                e = (k + SAVE_EVERY) // SAVE_EVERY                                   # ⌈(k + 1) / SAVE_EVERY⌉
                _store_states(hstart_ptr + (row * n_saves + e) * N, Hs, cols, lo, hi, Q)
    if SUMMARY:  # the chunk's end state: per state, the sum of its slot over the threads of a channel
        for n in tl.static_range(N):
            H, H2 = _set_column(H, H2, cols, n, Q, _slot_total(P0, P1, P2, P3, slots, n))
        tl.store(sum_ptr + (row * n_chunks + chunk) * N + cols, H, mask=lo)
        tl.store(sum_ptr + (row * n_chunks + chunk) * N + Q + cols, H2, mask=hi)
        tl.store(dtsum_ptr + row * n_chunks + chunk + 0 * d, dt_sum, mask=mask_d)


def use_rows(batch: int, dim: int, L: int, B: torch.Tensor, C: torch.Tensor, n_state: int, splits: bool) -> bool:
    """Whether the rows forward beats `fused` here (H100 sweeps, BENCHMARKS.md): when batch·dim fills the GPU without
    splitting L (a quarter of SPLIT_TARGET_THREADS), or where L is split anyway (`splits`: by `fused`'s forward, or
    by the backward of 2 channels per program that the rows forward's saves allow). Only for variable B and C of one
    group, N ≤ 2Q and L ≥ 1024. MBA_SCAN_ROWS=1 or 0 forces the choice."""
    if B.dim() != 4 or C.dim() != 4 or B.shape[1] != 1 or C.shape[1] != 1 or n_state > 2 * Q:
        return False
    forced = os.environ.get("MBA_SCAN_ROWS")
    if forced in ("0", "1"):
        return forced == "1"
    return L >= 1024 and (batch * dim * (Q // 8) >= SPLIT_TARGET_THREADS // 4 or splits)


def rows_forward(u, delta, z, A32, B, C, D32, bias32, h0, softplus: bool, save_pre: bool, block_t: int):
    """u, delta, z (batch, dim, L) any float dtype; A32 (dim, N) fp32; B, C (batch, 1, N, L); D32, bias32 (dim,) fp32 or
    None; h0 (batch, dim, N) fp32 or None. block_t: the backward's tile (tokens), a multiple of Q.
    Returns out (batch, dim, L) in u's dtype, the pre-gate output (or None) and h_start (batch, dim, ⌈L/block_t⌉ + 1,
    N) fp32 (the state at each backward tile start, then the last state)."""
    batch, dim, L = u.shape
    n_state = A32.shape[1]
    assert block_t % Q == 0, "the backward's tiles must be whole tiles of the forward"
    save_every = block_t // Q
    n_tiles = cdiv(L, Q)
    n_saves = cdiv(L, block_t) + 1
    n_chunks = _n_chunks(batch * dim * (Q // 8), n_saves - 1)
    tiles_per_chunk = cdiv(cdiv(n_tiles, n_chunks), save_every) * save_every  # whole backward tiles
    n_chunks = cdiv(n_tiles, tiles_per_chunk)
    f32 = dict(device=u.device, dtype=torch.float32)
    B32, C32 = cast(B, torch.float32), cast(C, torch.float32)  # converted once here, not by every channel's program
    out = torch.empty_like(u)
    pre = torch.empty_like(u) if save_pre else None
    h_start = torch.empty(batch, dim, n_saves, n_state, **f32)
    dummy = A32  # any fp32 tensor, for the pointers of absent options
    chunk_sum, chunk_dt = summary_buffers(batch, dim, n_chunks, n_state, dummy)
    args = (u, delta, z if z is not None else u, A32, B32, C32, D32 if D32 is not None else dummy,
            bias32 if bias32 is not None else dummy, h0 if h0 is not None else dummy, out,
            pre if pre is not None else out, h_start, chunk_sum, chunk_dt, dim, L, n_tiles, tiles_per_chunk, n_saves)
    flags = dict(N=n_state, BLOCK_D=BLOCK_D, Q=Q, SAVE_EVERY=save_every, HAS_D=D32 is not None, HAS_Z=z is not None,
                 HAS_BIAS=bias32 is not None, SOFTPLUS=softplus, HAS_H0=h0 is not None, SAVE_PRE=save_pre,
                 STAGES=STAGES, num_warps=WARPS)
    grid = (batch, cdiv(dim, BLOCK_D), n_chunks)
    launch_passes(_rows_fwd_kernel, grid, args, flags)
    return out, pre, h_start

