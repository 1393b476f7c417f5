"""Triton building blocks shared by the fused scans (real and complex A) and the decoding step: the scan's combine
operators (real and complex) and the blocked reverse scans built on them, softplus and Δ from the raw delta, the gated
output store, and tile loads with the masks that turn out-of-range tokens into identity steps (Δ = 0); and on the host,
how many chunks L is split into (sequence parallelism)."""
from __future__ import annotations

import functools
import math
import os

import torch
import triton
import triton.language as tl

from ..host import cdiv, next_power_of_2

LOG2E = tl.constexpr(1.4426950408889634)  # exp(x) = exp2(x·log2 e)
# Tokens a thread holds contiguously in a tile of 2-byte inputs (16-byte loads): the segments of `_reverse_scan`.
# Another value only adds a layout conversion; the result is the same.
REVERSE_SEG = tl.constexpr(8)


@triton.jit
def _combine(a1, x1, a2, x2):
    """(a1, x1) then (a2, x2): h ↦ a2·(a1·h + x1) + x2."""
    return a1 * a2, a2 * x1 + x2


@triton.jit
def _combine_with_tail(a1, x1, e1, f1, a2, x2, e2, f2):
    """Reverse-scan operator on segments carried as (whole segment, segment without its first element), each an
    (a, x) pair; 1 is the later segment, 2 the earlier. Its scan's second pair is the exclusive reverse scan."""
    a, x = _combine(a1, x1, a2, x2)
    e, f = _combine(a1, x1, e2, f2)
    return a, x, e, f


@triton.jit
def _combine_complex(ar1, ai1, xr1, xi1, ar2, ai2, xr2, xi2):
    """`_combine` for complex a, x held as (real, imaginary) pairs: (a2·a1, a2·x1 + x2)."""
    return (ar2 * ar1 - ai2 * ai1, ar2 * ai1 + ai2 * ar1,
            ar2 * xr1 - ai2 * xi1 + xr2, ar2 * xi1 + ai2 * xr1 + xi2)


@triton.jit
def _combine_complex_with_tail(ar1, ai1, xr1, xi1, er1, ei1, fr1, fi1, ar2, ai2, xr2, xi2, er2, ei2, fr2, fi2):
    """`_combine_with_tail` for complex pairs."""
    ar, ai, xr, xi = _combine_complex(ar1, ai1, xr1, xi1, ar2, ai2, xr2, xi2)
    er, ei, fr, fi = _combine_complex(ar1, ai1, xr1, xi1, er2, ei2, fr2, fi2)
    return ar, ai, xr, xi, er, ei, fr, fi


@triton.jit
def _combine_complex_reverse_own(fr1, fi1, qr1, qi1, lr1, li1, fr2, fi2, qr2, qi2, lr2, li2):
    """`_combine_reverse_own` for complex (f, q, l) held as (real, imaginary) pairs: g = q2·f1, then
    (f2, g·q1, l2 + g·l1)."""
    gr, gi = qr2 * fr1 - qi2 * fi1, qr2 * fi1 + qi2 * fr1
    return fr2, fi2, gr * qr1 - gi * qi1, gr * qi1 + gi * qr1, lr2 + gr * lr1 - gi * li1, li2 + gr * li1 + gi * lr1


@triton.jit
def _reverse_scan_complex(ar, ai, wr, wi, SEG: tl.constexpr):
    """`_reverse_scan` for complex a, w as real and imaginary planes, fp32 [R, T]: λ_t = w_t + a_{t+1}·λ_{t+1} from
    each token's own a_t, returned as (λ_r, λ_i). The same blocks: segments of SEG tokens scanned inside their thread
    (flip, forward scan, flip) with `_combine_complex_reverse_own`, then an exclusive reverse scan over the segments'
    ρ-pairs (Π a, f·l) gives each segment ρ = a·λ at the next segment's first token."""
    R: tl.constexpr = ar.shape[0]
    S: tl.constexpr = ar.shape[1] // SEG
    shape3: tl.constexpr = [R, S, SEG]
    ar3, ai3 = tl.reshape(ar, shape3), tl.reshape(ai, shape3)
    one3, zero3 = tl.full(shape3, 1.0, tl.float32), tl.zeros(shape3, tl.float32)
    _, _, qr, qi, lr, li = tl.associative_scan((tl.flip(ar3, 2), tl.flip(ai3, 2), one3, zero3,
                                                tl.flip(tl.reshape(wr, shape3), 2), tl.flip(tl.reshape(wi, shape3), 2)),
                                               axis=2, combine_fn=_combine_complex_reverse_own)
    qr, qi, lr, li = tl.flip(qr, 2), tl.flip(qi, 2), tl.flip(lr, 2), tl.flip(li, 2)
    first = tl.arange(0, SEG)[None, None, :] == 0
    Fr, Fi = tl.sum(tl.where(first, ar3, 0.0), axis=2), tl.sum(tl.where(first, ai3, 0.0), axis=2)  # [R, S]
    Qr, Qi = tl.sum(tl.where(first, qr, 0.0), axis=2), tl.sum(tl.where(first, qi, 0.0), axis=2)
    Lr, Li = tl.sum(tl.where(first, lr, 0.0), axis=2), tl.sum(tl.where(first, li, 0.0), axis=2)
    one, zero = tl.full(Fr.shape, 1.0, tl.float32), tl.zeros_like(Fr)
    _, _, _, _, _, _, Mr, Mi = tl.associative_scan((Fr * Qr - Fi * Qi, Fr * Qi + Fi * Qr, Fr * Lr - Fi * Li,
                                                    Fr * Li + Fi * Lr, one, zero, zero, zero), axis=1,
                                                   combine_fn=_combine_complex_with_tail, reverse=True)
    Mr, Mi = Mr[:, :, None], Mi[:, :, None]                                  # ρ after each segment
    return tl.reshape(lr + qr * Mr - qi * Mi, ar.shape), tl.reshape(li + qr * Mi + qi * Mr, ar.shape)


@triton.jit
def _combine_reverse_own(f1, q1, l1, f2, q2, l2):
    """Reverse-scan operator of `_reverse_scan` on segment summaries (f, q, l): f the segment's first a, q the product
    of its other a's, l its λ at the first token from a zero carry. 1 is the later segment, 2 the earlier:
    λ_first = l2 + q2·f1·l1."""
    g = q2 * f1
    return f2, g * q1, l2 + g * l1


@triton.jit
def _reverse_scan(a, w, SEG: tl.constexpr):
    """The adjoint λ_t = w_t + a_{t+1}·λ_{t+1} along axis 1 of a, w (fp32 [R, T]; λ beyond the tile is 0, so the
    caller adds any carry into the last w), from each token's own a_t: no a_{t+1} to compute.
    Blocked: each row as segments of SEG tokens (those a thread holds contiguously, so that the reshape moves no data;
    T a multiple of SEG). Inside its thread each segment is scanned (flip, forward scan, flip) with
    `_combine_reverse_own`, which leaves every token t its (q_t, l_t): λ_t = l_t + q_t·ρ, ρ = a·λ at the next
    segment's first token. The segments' ρ-pairs (P, RHO) = (Π a, f·l), ρ_first = P·ρ_next + RHO, then go through
    an exclusive reverse scan, which gives each segment the ρ after it. Returns λ and, per segment, ρ at its first
    token ([R, T // SEG]; column 0 is a_0·λ_0, the carry into the tile before): one FFMA per segment, where the
    scan's inclusive output cost 20 more shuffles (sm_90, 2 × 256 tokens on one warp).
    Triton's own reverse scan moves every element through ~20 warp shuffles, even where the axis lies inside a thread.
    Compiled for sm_90 (Triton 3.6 and 3.8; BENCHMARKS.md), the blocked scan, then on (a_{t+1}, w), against Triton's:
    [16, 64] tile over 4 warps, 26 shuffles and 144 instructions against 168 and 280; [1, 1024] over 2 warps, 60 and
    336 against 344 and 584."""
    R: tl.constexpr = a.shape[0]
    S: tl.constexpr = a.shape[1] // SEG
    a_seg, w_seg = tl.reshape(a, [R, S, SEG]), tl.reshape(w, [R, S, SEG])
    _, q_seg, l_seg = tl.associative_scan((tl.flip(a_seg, 2), tl.full(a_seg.shape, 1.0, tl.float32),
                                           tl.flip(w_seg, 2)), axis=2, combine_fn=_combine_reverse_own)
    q_seg, l_seg = tl.flip(q_seg, 2), tl.flip(l_seg, 2)
    first = tl.arange(0, SEG)[None, None, :] == 0
    f = tl.sum(tl.where(first, a_seg, 0.0), axis=2)                         # each segment whole, [R, S]
    P = f * tl.sum(tl.where(first, q_seg, 0.0), axis=2)
    RHO = f * tl.sum(tl.where(first, l_seg, 0.0), axis=2)
    _, _, _, rho_after = tl.associative_scan((P, RHO, tl.full(P.shape, 1.0, tl.float32), tl.zeros_like(P)),
                                             axis=1, combine_fn=_combine_with_tail, reverse=True)
    return tl.reshape(l_seg + q_seg * rho_after[:, :, None], a.shape), P * rho_after + RHO


@triton.jit
def _softplus(x):
    """log(1 + e^x) in fp32 as max(x, 0) + log1p(e), e = e^−|x| in (0, 1]: log1p(e) = 2·atanh(s), s = e / (2 + e)
    ≤ 1/3, by its series to s^15 (relative error below 2e-6 at every x; log(1 + e) loses all of it once e < 2^−24).
    One exp2 and one reciprocal: for sm_90 about 17 instructions against 31 for tl.log(1 + tl.exp(·)); on an H100
    the forwards with z were 2-7% faster with it and `_sigmoid` (BENCHMARKS.md)."""
    e = tl.exp2(-tl.abs(x) * LOG2E)
    s = e / (2.0 + e)
    s2 = s * s
    p = 1.0 / 15.0
    for c in tl.static_range(13, 2, -2):
        p = p * s2 + 1.0 / c
    return tl.maximum(x, 0.0) + 2.0 * s + 2.0 * s * s2 * p


@triton.jit
def _sigmoid(x):
    """1 / (1 + e^−x) in fp32 from exp2."""
    return 1.0 / (1.0 + tl.exp2(-x * LOG2E))


@triton.jit
def _cos_sin(x):
    """cos x and sin x in fp32 by a quadrant reduction and short polynomials, with no branch and no local memory:
    x = q·π/2 + r with π/2 in three parts (Cody and Waite; q·π/2's first two parts are exact for |q| < 2^13, |x| up to
    about 1.3e4), Cephes' single-precision minimax polynomials for sin r and cos r on [−π/4, π/4], then the quadrant's
    swap and signs. Against float64, absolute error below 1e-6 for |x| ≤ 1e4 (a test checks it). tl.cos and tl.sin
    are libdevice's, with a slow path for large x that spills to local memory."""
    q = tl.floor(x * 0.6366197723675814 + 0.5)                                     # the nearest multiple of π/2
    r = ((x - q * 1.5703125) - q * 4.837512969970703125e-4) - q * 7.54978995489188216e-8
    r2 = r * r
    sin_r = ((-1.9515295891e-4 * r2 + 8.3321608736e-3) * r2 - 1.6666654611e-1) * r2 * r + r
    cos_r = ((2.443315711809948e-5 * r2 - 1.388731625493765e-3) * r2 + 4.166664568298827e-2) * r2 * r2 \
        - 0.5 * r2 + 1.0
    quadrant = q.to(tl.int32)
    odd = (quadrant & 1) != 0
    cos_x = tl.where(odd, sin_r, cos_r)
    sin_x = tl.where(odd, cos_r, sin_r)
    return tl.where(((quadrant + 1) & 2) != 0, -cos_x, cos_x), tl.where((quadrant & 2) != 0, -sin_x, sin_x)


@triton.jit
def _split_pairs(x):
    """x (..., 2K) of (real, imaginary) pairs along its last axis (a complex64 tensor's floats) → its real and
    imaginary parts, each (..., K): loaded in a row (wide accesses), split in registers."""
    # the shape as a list in both Triton's compiler and its interpreter (their shapes and literals differ in kind)
    return tl.split(tl.reshape(x, list(x.shape[:-1]) + list((x.shape[-1] // 2, 2))))


@triton.jit
def _join_pairs(re, im):
    """The inverse of `_split_pairs`: re and im (..., K) → (..., 2K) interleaved, to store in a row (the shape built
    as there)."""
    return tl.reshape(tl.join(re, im), list(re.shape[:-1]) + list((2 * re.shape[-1],)))


@triton.jit
def _complex_step(h, h_im, decay, angle, add, add_im):
    """One token of a complex state, elementwise: (h, h_im) ← exp(Δ·A)·h + add in complex arithmetic, with
    exp(Δ·A) = decay·(cos, sin)(angle), decay = exp(Δ·Re A) and angle = Δ·Im A (the decoding steps' update)."""
    cos, sin = _cos_sin(angle)
    a_re, a_im = decay * cos, decay * sin
    return a_re * h - a_im * h_im + add, a_re * h_im + a_im * h + add_im


@triton.jit
def _delta(raw, bias, mask, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Δ as fp32 from the raw delta loaded over a tile: + bias, softplus, 0 (the identity step) outside mask."""
    dt = raw.to(tl.float32)
    if HAS_BIAS:
        dt += bias
    if SOFTPLUS:
        dt = _softplus(dt)
    return tl.where(mask, dt, 0.0)


@triton.jit
def _store_output(out_ptr, pre_ptr, z_ptr, offs, y, mask, HAS_Z: tl.constexpr, SAVE_PRE: tl.constexpr):
    """out = y·silu(z) (or y) at offs in out's dtype; with SAVE_PRE also y itself, the output before the gate."""
    if HAS_Z:
        if SAVE_PRE:
            tl.store(pre_ptr + offs, y.to(pre_ptr.dtype.element_ty), mask=mask)
        z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        y = y * z * _sigmoid(z)
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


# Sequence parallelism: L is split into chunks run by different programs when batch·dim programs are fewer than
# SPLIT_BELOW_PER_SM per SM, into as many chunks as keep them within PROGRAMS_PER_SM programs per SM (real A on an
# H100: at 512 programs on 132 SMs one chunk was faster, at 256 nine chunks were 1.2x faster, at 128 eight were 2.4x
# faster). Within, not just near: the backward fits 8 programs per SM at a time, so 9 chunks of 256 programs (2,304 >
# 16 × 132) ran in three waves and took 26.9 ms fwd+bwd at 1 × 256 × 2^20, against 23.1 ms for 8 chunks (two
# waves); at 1 × 128, 17 chunks 13.6 ms against 16 chunks 11.9 ms (BENCHMARKS.md). MBA_SCAN_CHUNKS forces the count.
PROGRAMS_PER_SM = 16
SPLIT_BELOW_PER_SM = 3
MIN_TILES_PER_CHUNK = 2


@functools.cache
def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (an H100's 132 elsewhere, e.g. under TRITON_INTERPRET); cached: it
    is asked several times per call, and each torch query cost ~5 µs of the ~0.3 ms host time of a short scan."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132


def splits_l(programs: int, device: torch.device) -> bool:
    """Whether `programs` programs are too few to fill the GPU (fewer than SPLIT_BELOW_PER_SM per SM), so that
    `split_tiles` splits L into chunks (unless MBA_SCAN_CHUNKS forces a count)."""
    return programs < SPLIT_BELOW_PER_SM * sm_count(device)


def split_tiles(programs: int, n_tiles: int, device: torch.device,
                per_sm: int = PROGRAMS_PER_SM) -> tuple[int, int]:
    """(tiles per chunk, chunks) for `programs` (batch·dim) programs walking n_tiles tiles each, about per_sm
    programs per SM in all when L is split."""
    forced = os.environ.get("MBA_SCAN_CHUNKS")
    sms = sm_count(device)
    if forced:
        n_chunks = max(1, min(int(forced), n_tiles))
    elif not splits_l(programs, device):
        n_chunks = 1
    else:
        n_chunks = max(1, min(per_sm * sms // programs, n_tiles // MIN_TILES_PER_CHUNK))
    tiles_per_chunk = cdiv(n_tiles, n_chunks)
    return tiles_per_chunk, cdiv(n_tiles, tiles_per_chunk)


def plan_tiles(block_t: int, warps: int, shapes: dict, programs: int, L: int, device: torch.device,
               per_sm: int = PROGRAMS_PER_SM) -> tuple[int, int, int, int, int]:
    """BLOCK_T, warps, n_tiles, tiles_per_chunk, n_chunks of one pass of a scan whose passes' (tokens, warps) are
    `shapes`, with tiles of up to block_t tokens: the tile shortened to the sequence, but to no fewer tokens than
    threads of the widest pass (reductions over replicated short tiles went wrong on an H100), L split as
    `split_tiles` says for `programs` (batch·dim) programs."""
    block_t = min(block_t, max(32 * max(w for _, w in shapes.values()), next_power_of_2(L)))
    n_tiles = cdiv(L, block_t)
    return block_t, warps, n_tiles, *split_tiles(programs, n_tiles, device, per_sm)


def tokens_per_thread(block_t: int, warps: int, itemsize: int) -> int:
    """How many consecutive tokens of a tile each thread holds, as Triton lays a tile out from its loads of 16 bytes
    (for `_store_token`): 8 for bf16 tiles of 512 tokens on 2 warps."""
    return max(min(block_t // (32 * warps), 16 // itemsize), 1)


def summary_buffers(batch: int, dim: int, n_chunks: int, n_state: int, dummy: torch.Tensor, planes: int = 1
                    ) -> tuple[torch.Tensor, ...]:
    """The chunk summaries of a pass whose L is split into n_chunks: `planes` state buffers (batch, dim, n_chunks, N)
    (real, or real and imaginary) and the chunks' ΣΔ (batch, dim, n_chunks), fp32. With one chunk no summary pass runs
    and the full pass folds no summaries, so `dummy` (an fp32 tensor) stands for each: at short L a call's time is its
    host work, and each allocation is part of it."""
    if n_chunks == 1:
        return (dummy,) * (planes + 1)
    f32 = dict(device=dummy.device, dtype=torch.float32)
    return (*(torch.empty(batch, dim, n_chunks, n_state, **f32) for _ in range(planes)),
            torch.empty(batch, dim, n_chunks, **f32))


def launch_passes(kernel, grid: tuple[int, int, int], args: tuple, flags: dict) -> None:
    """A scan kernel over `grid` (its last axis the chunks of L): the summary pass when L is split, then the full
    pass."""
    if grid[2] > 1:
        kernel[grid](*args, SUMMARY=True, **flags)
    kernel[grid](*args, SUMMARY=False, **flags)


def grouped(X: torch.Tensor) -> torch.Tensor:
    """Variable B or C as the kernels read it: (batch, G, N, L); the plain (batch, N, L) form is G = 1 (a view)."""
    return X[:, None] if X.dim() == 3 else X


def bc_grad_shape(X: torch.Tensor, per_chunk: tuple) -> tuple:
    """The shape of the backward's fp32 buffer for dB or dC: B's (grouped) shape where it varies (the kernels add
    into it atomically), (batch, dim, n_chunks, N) partial sums where it is constant (dim, N), summed by
    `sum_rows_chunks`."""
    return tuple(X.shape) if X.dim() > 2 else per_chunk


def zeroed(shapes, f32: dict) -> list[torch.Tensor]:
    """fp32 zeros of each shape, cut from one allocation: one memset for all (at short L a scan's time is its
    launches)."""
    sizes = [math.prod(shape) for shape in shapes]
    return [flat.view(shape) for flat, shape in zip(torch.zeros(sum(sizes), **f32).split(sizes), shapes)]


def sum_rows_chunks(x: torch.Tensor) -> torch.Tensor:
    """Per-channel partial gradients x (batch, dim, n_chunks[, N]) summed over batch rows and chunks: (dim[, N]).
    With one row and one chunk this is a view, not a kernel (at short L a scan's time is its launches)."""
    if x.shape[0] * x.shape[2] == 1:
        return x.view(x.shape[1], *x.shape[3:])
    return x.sum((0, 2))


@triton.jit
def _chunk_tiles(tiles_per_chunk, n_tiles):
    """This program's chunk of L (program axis 2), the number of chunks and its tiles k0 … k1 − 1."""
    chunk = tl.program_id(2)
    k0 = chunk * tiles_per_chunk
    return chunk, tl.num_programs(2), k0, tl.minimum(k0 + tiles_per_chunk, n_tiles)


def _block_d(dim_per_group: int, cap: int) -> int:
    """Channels per program: a power of two ≤ cap dividing the group's channel count (one group per block)."""
    block = 1
    while block * 2 <= cap and dim_per_group % (block * 2) == 0:
        block *= 2
    return block


@triton.jit
def _mul_rn(x, y, PTX: tl.constexpr):
    """x·y (fp32) rounded on its own, never fused into a later add or subtract, so that (x·y + 0) − x·y is exactly 0.
    PTX: on a GPU (inline mul.rn); otherwise (the interpreter) a plain product, which numpy never fuses."""
    if PTX:
        r = tl.inline_asm_elementwise("mul.rn.f32 $0, $1, $2;", "=r,r,r", [x, y], dtype=tl.float32, is_pure=True,
                                      pack=1)
    else:
        r = x * y
    return r


@triton.jit
def _channel(dim, n_groups, dim_per_group):
    """This program's channel d, its int64 row of (batch·dim) and its B/C row (batch·G + group)."""
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1)
    return d, b * dim + d, b * n_groups + d // dim_per_group


@triton.jit
def _load_seq(u_ptr, dt_ptr, bias, row, t, L, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, t_lo, t_hi):
    """u and Δ of one channel over a tile as fp32 [BLOCK_T]; Δ = 0 (the identity step) outside [t_lo, t_hi) ∩ [0, L)."""
    valid = (t >= t_lo) & (t < t_hi) & (t < L) & (t >= 0)
    u = tl.load(u_ptr + row * L + t, mask=valid, other=0.0).to(tl.float32)
    return u, _delta(tl.load(dt_ptr + row * L + t, mask=valid, other=0.0), bias, valid, HAS_BIAS, SOFTPLUS)


@triton.jit
def _load_state_row(ptr, row_bc, d, n, n_state, t, L, CONST: tl.constexpr, WHOLE: tl.constexpr = False):
    """B or C of state n over a tile, fp32 [BLOCK_T]: variable (batch, G, N, L) or constant (dim, N). WHOLE: every
    token of the tile is < L, so the load needs no mask (nor the zeroed registers a masked load starts from)."""
    if CONST:  # one exit: the branches' shapes differ where d holds several channels ([C, 1] against t's [1, T])
        X = tl.load(ptr + d * n_state + n) + tl.zeros(t.shape, tl.float32)
    else:
        row = ptr + (row_bc * n_state + n) * L + t
        X = tl.load(row) if WHOLE else tl.load(row, mask=t < L, other=0.0)
    return X.to(tl.float32)


@triton.jit
def _add_to(ptr, slot, n, value):
    """ptr[slot + n] += the scalar value: a program's per-state gradient summed over its tiles in its own zeroed slot,
    by a fire-and-forget atomic instead of a [BLOCK_N] register vector, whose element reads and writes cost shuffles
    and selects in every state of every tile. On an H100 this made the real-A fwd+bwd 1-11% faster; the complex-A
    backward, which spills, was 0-1% slower with it and keeps its vectors (BENCHMARKS.md)."""
    tl.atomic_add(ptr + slot + n, value, sem="relaxed")


@triton.jit
def _add_tokens(ptr, t0, L, values, PER_THREAD: tl.constexpr, THREADS: tl.constexpr, WHOLE: tl.constexpr):
    """ptr[t0 + t] += values[t] (fp32 [T], a tile's sum over its rows) where t0 + t < L (everywhere if WHOLE), by
    vector atomics of G = min(PER_THREAD, 4) tokens, each from the thread that holds them: the tile's THREADS threads
    hold PER_THREAD consecutive tokens each, the layout repeated R = T / (THREADS·PER_THREAD) times. Triton lays a
    plain [T] atomic out as G tokens per thread over consecutive threads, and moved every value to another thread
    first (8 warp shuffles per add for sm_90 at 256 tokens on a warp); offsets [R, PER_THREAD / G, THREADS, G] are
    laid out as the tile is. Each add then covers half of each 32-byte sector it touches, not whole ones; on an H100
    fwd+bwd was 0.5-2% faster all the same (BENCHMARKS.md)."""
    T: tl.constexpr = values.shape[0]
    G: tl.constexpr = min(PER_THREAD, 4)
    R: tl.constexpr = T // (THREADS * PER_THREAD)
    shape: tl.constexpr = [R, THREADS, PER_THREAD // G, G]
    offs = ((tl.arange(0, R)[:, None, None, None] * THREADS + tl.arange(0, THREADS)[None, :, None, None]) * PER_THREAD
            + tl.arange(0, PER_THREAD // G)[None, None, :, None] * G + tl.arange(0, G)[None, None, None, :])
    offs = tl.permute(offs, (0, 2, 1, 3))
    v = tl.permute(tl.reshape(values, shape), (0, 2, 1, 3))
    if WHOLE:
        tl.atomic_add(ptr + t0 + offs, v, sem="relaxed")
    else:
        tl.atomic_add(ptr + t0 + offs, v, mask=t0 + offs < L, sem="relaxed")


@triton.jit
def _store_token(ptr, X, token, mask, ROWS: tl.constexpr, PER_THREAD: tl.constexpr):
    """ptr[r] = X[r, token] for each row r of X [ROWS, BLOCK_T] or [BLOCK_T] (ROWS = 1; ptr and mask [ROWS, 1] or
    scalars), stored by the thread that holds the token. Viewed as [ROWS, BLOCK_T / PER_THREAD, PER_THREAD], X keeps
    its layout when each thread holds PER_THREAD consecutive tokens (`tokens_per_thread`), so the token is picked
    in-thread. A store of X itself under a token mask first moved all of X through shared memory, since that store
    wants a token's rows in one thread: on sm_90 that took 4 of the real-A forward's 6 barriers per tile and pair of
    states."""
    GROUPS: tl.constexpr = X.numel // (ROWS * PER_THREAD)
    own = tl.arange(0, PER_THREAD)[None, None, :]
    group = tl.arange(0, GROUPS)[None, :]
    picked = tl.sum(tl.where(own == token % PER_THREAD, tl.reshape(X, [ROWS, GROUPS, PER_THREAD]), 0.0), axis=2)
    tl.store(ptr + 0 * group, picked, mask=(group == token // PER_THREAD) & mask)


@triton.jit
def _replace(T, n: tl.constexpr, value):
    """The tuple T with entry n replaced by value."""
    return T[:n] + (value,) + T[n + 1:]


@triton.jit
def _thread_sums(x, PER_THREAD: tl.constexpr):
    """x [T] or [C, T] summed over each run of PER_THREAD consecutive tokens, those one thread holds (so that no value
    moves between threads): [T / PER_THREAD] or [C, T / PER_THREAD]."""
    T: tl.constexpr = x.shape[-1]
    if len(x.shape) == 1:
        return tl.sum(tl.reshape(x, [T // PER_THREAD, PER_THREAD]), axis=1)
    else:
        return tl.sum(tl.reshape(x, [x.shape[0], T // PER_THREAD, PER_THREAD]), axis=2)


@triton.jit
def _sums_start(A_ptr, d, n_state, zero_tile, BLOCK_N: tl.constexpr, PER_THREAD: tl.constexpr):
    """What `_carry_sums` starts from, as tuples of BLOCK_N entries: A·log2 e per state (d a channel, or [C, 1]
    channels; states from n_state on take the last one's and are never stored), and each thread's sums of zero_tile
    (zeros, [T] or [C, T])."""
    zero = _thread_sums(zero_tile, PER_THREAD)
    A2s = ()
    sums = ()
    for n in tl.static_range(BLOCK_N):
        A2s = A2s + (tl.load(A_ptr + d * n_state + tl.minimum(n, n_state - 1)) * LOG2E,)
        sums = sums + (zero,)
    return A2s, sums


@triton.jit
def _carry_sums(sums, n: tl.constexpr, A2n, E, S_tile, w, PER_THREAD: tl.constexpr):
    """The summary passes' carry of state n through one tile, without a scan and without moving data between threads:
    sums[n] ← exp2(A2n·S_tile)·sums[n] + Σ over each thread's tokens of exp2(A2n·E_t)·w_t. sums: a tuple of one entry
    per state, each a thread's own sum ([T / PER_THREAD], or [C, T / PER_THREAD] for C channels); E, w [T] or [C, T];
    A2n and S_tile scalars or [C, 1]. The threads' sums of a state decay by the same factor tile after tile, so they
    are added together once, at the chunk's end (`_sums_total`)."""
    part = _thread_sums(tl.exp2(E * A2n) * w, PER_THREAD)
    return _replace(sums, n, tl.exp2(A2n * S_tile) * sums[n] + part)


@triton.jit
def _sums_total(X, sums, offs_n):
    """X ([BLOCK_N] or [C, BLOCK_N]) with element n set to the total of `_carry_sums`' sums[n] over the threads."""
    for n in tl.static_range(len(sums)):
        X = tl.where(offs_n == n, tl.sum(sums[n], axis=-1, keep_dims=True), X)
    return X


@triton.jit
def _update(X, offs_n, n, value):
    """X [BLOCK_N] with element n replaced by the scalar value."""
    return tl.where(offs_n == n, value, X)


@triton.jit
def _element(X, offs_n, n):
    return tl.sum(tl.where(offs_n == n, X, 0.0), axis=0)
