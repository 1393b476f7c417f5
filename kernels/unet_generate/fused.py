"""Generation from a causal Mamba U-Net (AudioUNet, two pooling levels, real or complex A) in one persistent Triton
kernel.

Why: a sample of the SC09 U-Net steps about 20 Mamba blocks (16 at full rate, the pooled stages every 4th and 16th
sample) plus pooling, norm, head and draw; as separate kernels, even replayed from a CUDA graph, a sample costs
~280 µs at batch 1 (0.23× real time) and generation at batch 256 is bound by kernel count (BENCHMARKS.md).

Here one program owns BLOCK_B rows for a whole run of positions and loops over them, doing everything a sample
needs in registers and in scratch that only it touches (rows are independent), so there is no launch, no host work
and no synchronisation between programs. Per position t (the U-Net's step, `AudioUNet._step_level`):

    x   = embedding[token]                                   (BLOCK_B, D0)
    d0  = down stage 0 (x);  o0 = up stage 0 (up_buf0[t % P0] + d0);  down_buf0[t % P0] = d0
    if t % P0 == P0 − 1:                                     a coarse step of level 1 (tick t1 = t // P0)
        d1 = down stage 1 (DownPool0(down_buf0));  o1 = up stage 1 (up_buf1[t1 % P1] + d1);  down_buf1[t1 % P1] = d1
        if t1 % P1 == P1 − 1:  up_buf1 = UpPool1(centre (DownPool1(down_buf1)))
        up_buf0 = UpPool0(o1)
    logits = head(RMSNorm(o0));  token = prompt[t] or a draw (temperature, top-p, Gumbel-max)

A stage is n_layers pre-norm residual Mamba blocks (`mamba_block_step_naive`'s math), each walking E in chunks of
E_CHUNK channels twice: in_proj, conv step and x_proj's partial sums; then Δ, the state update, the gate and
out_proj's partial sums. The conv state is a ring of d_conv slots indexed by the stage's tick (nothing shifts).
Weight matrices are read in the model's dtype (fp32 for fp64; bf16 halves the bytes), everything else is fp32:
arithmetic, states, norms, biases and A. Noise: Triton's Philox (`tl.rand`, seeded per position, so a seed fixes
the clips whatever the launch sizes) or, for tests, a uniform tensor like the PyTorch path.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ..host import cdiv, floor_power_of_2, next_power_of_2
from ..selective_scan.triton_tiles import LOG2E, _softplus, sm_count

# Launch shape, timed on an H100 (BENCHMARKS.md, 2026-11-24; SC09 U-Net, batches 1, 64 and 256): one row per
# program (2, 4 and 16 rows were 1.3–2.8× slower, 16 rows on the tensor cores 1.2–2.4×), broadcast products' tiles
# of at most TILE_ELEMENTS, WARPS warps, and the walks over E software-pipelined in STAGES (1.2–1.3× faster than
# none). With more programs than SMs, MANY_PROGRAMS (warps, tile) instead: at batch 256 (one row per program),
# 465,363 and 488,127 samples/s against 370,196 and 354,651 for the batch-1 shape (two runs).
TILE_ELEMENTS = 8192
WARPS = 8
STAGES = 2
MANY_PROGRAMS = (4, 4096)


@triton.jit
def _mm(x, w_ptr, LD: tl.constexpr, N_OUT: tl.constexpr, K: tl.constexpr):
    """x [BLOCK_B, K] fp32 times W[:N_OUT, :K]ᵀ → [BLOCK_B, N_OUT] fp32, with W[o, k] at w_ptr + o·LD + k (an
    nn.Linear weight (out, in), or a block of one). With 16-bit weights and at least 16 rows, outputs and inputs: a
    tensor-core product, x rounded to the weights' dtype, fp32 accumulation (`uses_dot`). Otherwise: a broadcast
    product in fp32 summed over K, the contiguous axis."""
    DOT: tl.constexpr = w_ptr.dtype.element_ty.primitive_bitwidth == 16 and min(x.shape[0], N_OUT, K) >= 16
    if DOT:
        w = tl.load(w_ptr + tl.arange(0, K)[:, None] + tl.arange(0, N_OUT)[None, :] * LD)       # Wᵀ [K, N_OUT]
        return tl.dot(x.to(w.dtype), w)
    w = tl.load(w_ptr + tl.arange(0, N_OUT)[:, None] * LD + tl.arange(0, K)[None, :]).to(tl.float32)
    return tl.sum(x[:, None, :] * w[None, :, :], axis=2)


@triton.jit
def _mm_mem(x_ptr, x_ld, rows, row_ok, w_ptr, LD: tl.constexpr, N_OUT: tl.constexpr, K: tl.constexpr,
            K_CHUNK: tl.constexpr, BLOCK_B: tl.constexpr):
    """As `_mm` with x read from memory, x[row, :K] at x_ptr + row·x_ld, K_CHUNK inputs at a time."""
    acc = tl.zeros([BLOCK_B, N_OUT], tl.float32)
    offs_k = tl.arange(0, K_CHUNK)
    for k in range(0, K, K_CHUNK):
        x = tl.load(x_ptr + rows[:, None] * x_ld + k + offs_k[None, :], mask=row_ok[:, None], other=0.0)
        acc += _mm(x, w_ptr + k, LD, N_OUT, K_CHUNK)
    return acc


@triton.jit
def _rms(x, w_ptr, eps, D: tl.constexpr):
    """RMSNorm of x [BLOCK_B, D] fp32 times the weight at w_ptr."""
    w = tl.load(w_ptr + tl.arange(0, D))
    return x * tl.rsqrt(tl.sum(x * x, axis=1) / D + eps)[:, None] * w[None, :]


@triton.jit
def _walk_in(c, u, dt_r, b_in, c_out, b_im, c_im, m_ptr, v_ptr, conv_ptr, xz_ptr, rows, row_ok, slot_now, tap, o_in,
             o_in_b, o_conv, o_conv_b, o_xp, D: tl.constexpr, E: tl.constexpr, R: tl.constexpr, N: tl.constexpr,
             W: tl.constexpr, E_CHUNK: tl.constexpr, COMPLEX: tl.constexpr):
    """Channels [c, c + E_CHUNK) of a block's first walk: x, z = in_proj(u); x enters the conv ring; x = silu(conv);
    x and z to scratch; x_proj's partial sums added to (dt_r, B, C, and with COMPLEX the imaginary parts of B and C
    (x_proj's rows: dt_r, Re B, Im B, Re C, Im C)), which are returned."""
    ch = c + tl.arange(0, E_CHUNK)
    offs_w = tl.arange(0, W)
    x = _mm(u, m_ptr + o_in + c * D, D, E_CHUNK, D) + tl.load(v_ptr + o_in_b + ch)[None, :]      # in_proj (2E, D)
    z = _mm(u, m_ptr + o_in + (E + c) * D, D, E_CHUNK, D) + tl.load(v_ptr + o_in_b + E + ch)[None, :]
    ring = conv_ptr + (rows[:, None, None] * E + ch[None, :, None]) * W + offs_w[None, None, :]
    newest = (offs_w == slot_now)[None, None, :]
    window = tl.where(newest, x[:, :, None], tl.load(ring, mask=row_ok[:, None, None], other=0.0))
    taps = tl.load(m_ptr + o_conv + ch[:, None] * W + tap[None, :]).to(tl.float32)          # [E_CHUNK, W]
    x = tl.sum(window * taps[None, :, :], axis=2) + tl.load(v_ptr + o_conv_b + ch)[None, :]
    tl.store(ring, window, mask=row_ok[:, None, None] & newest)
    x = x * tl.sigmoid(x)
    tl.store(xz_ptr + rows[:, None] * (2 * E) + ch[None, :], x, mask=row_ok[:, None])
    tl.store(xz_ptr + rows[:, None] * (2 * E) + E + ch[None, :], z, mask=row_ok[:, None])
    BC: tl.constexpr = 2 * N if COMPLEX else N                                              # B's rows
    cols = m_ptr + o_xp + c                                              # x_proj (R + 2·BC, E), its inputs c…
    dt_r += _mm(x, cols, E, R, E_CHUNK)
    b_in += _mm(x, cols + R * E, E, N, E_CHUNK)
    c_out += _mm(x, cols + (R + BC) * E, E, N, E_CHUNK)
    if COMPLEX:
        b_im += _mm(x, cols + (R + N) * E, E, N, E_CHUNK)
        c_im += _mm(x, cols + (R + BC + N) * E, E, N, E_CHUNK)
    return dt_r, b_in, c_out, b_im, c_im


@triton.jit
def _walk_out(c, out, dt_r, b_in, c_out, b_im, c_im, m_ptr, v_ptr, ssm_ptr, xz_ptr, rows, row_ok, o_dt, o_dt_b, o_a,
              o_d, o_out, D: tl.constexpr, E: tl.constexpr, R: tl.constexpr, N: tl.constexpr, E_CHUNK: tl.constexpr,
              COMPLEX: tl.constexpr):
    """Channels [c, c + E_CHUNK) of a block's second walk: Δ = softplus(dt_proj(dt_r)); h = exp(Δ·A)·h + Δ·B·x in
    place; y = (C·h + D·x)·silu(z), C·h taken as 2·Re(C·h) with COMPLEX (state (row, E, [Re h, Im h]), A's
    imaginary part after its real part in the pack); out_proj's partial sum added to out, which is returned."""
    ch = c + tl.arange(0, E_CHUNK)
    offs_n = tl.arange(0, N)
    dt = _mm(dt_r, m_ptr + o_dt + c * R, R, E_CHUNK, R) + tl.load(v_ptr + o_dt_b + ch)[None, :]  # dt_proj (E, R)
    dt = _softplus(dt)
    x = tl.load(xz_ptr + rows[:, None] * (2 * E) + ch[None, :], mask=row_ok[:, None], other=0.0)
    z = tl.load(xz_ptr + rows[:, None] * (2 * E) + E + ch[None, :], mask=row_ok[:, None], other=0.0)
    a2 = tl.load(v_ptr + o_a + ch[:, None] * N + offs_n[None, :])                           # Re A·log2 e
    SW: tl.constexpr = 2 * N if COMPLEX else N                                              # state width
    state = ssm_ptr + (rows[:, None, None] * E + ch[None, :, None]) * SW + offs_n[None, None, :]
    h = tl.load(state, mask=row_ok[:, None, None], other=0.0)
    decay = tl.exp2(dt[:, :, None] * a2[None, :, :])
    dx = (dt * x)[:, :, None]
    if COMPLEX:
        angle = dt[:, :, None] * tl.load(v_ptr + o_a + E * N + ch[:, None] * N + offs_n[None, :])[None, :, :]
        h_im = tl.load(state + N, mask=row_ok[:, None, None], other=0.0)
        h, h_im = (decay * (tl.cos(angle) * h - tl.sin(angle) * h_im) + dx * b_in[:, None, :],
                   decay * (tl.sin(angle) * h + tl.cos(angle) * h_im) + dx * b_im[:, None, :])
        tl.store(state + N, h_im, mask=row_ok[:, None, None])
        y = 2.0 * tl.sum(h * c_out[:, None, :] - h_im * c_im[:, None, :], axis=2)
    else:
        h = decay * h + dx * b_in[:, None, :]
        y = tl.sum(h * c_out[:, None, :], axis=2)
    tl.store(state, h, mask=row_ok[:, None, None])
    y += tl.load(v_ptr + o_d + ch)[None, :] * x
    y = y * z * tl.sigmoid(z)
    return out + _mm(y, m_ptr + o_out + c, E, D, E_CHUNK)                                   # out_proj (D, E)


@triton.jit
def _block(hidden, residual, m_ptr, v_ptr, conv_ptr, ssm_ptr, xz_ptr, rows, row_ok, tick, n_rows, eps,
           D: tl.constexpr, E: tl.constexpr, R: tl.constexpr, N: tl.constexpr, W: tl.constexpr,
           E_CHUNK: tl.constexpr, BLOCK_B: tl.constexpr, STAGES: tl.constexpr, COMPLEX: tl.constexpr):
    """One position through a pre-norm residual Mamba block: hidden, residual [BLOCK_B, D] fp32 → (mixer output,
    hidden + residual). m_ptr, v_ptr: the block's matrices and fp32 vectors (`pack_block`); conv_ptr (n_rows, E, W)
    ring and ssm_ptr (n_rows, E, N) states of this block; xz_ptr (n_rows, 2E) scratch for x and z between the two
    walks over E, software-pipelined by Triton in STAGES stages (1: none)."""
    BC: tl.constexpr = 2 * N if COMPLEX else N                  # B's and C's rows in x_proj
    o_in = 0                                   # the packs' layouts, as pack_block writes them: matrices
    o_conv = o_in + 2 * E * D
    o_xp = o_conv + E * W
    o_dt = o_xp + (R + 2 * BC) * E
    o_out = o_dt + E * R
    o_in_b = D                                 # vectors, after the norm's weight
    o_conv_b = o_in_b + 2 * E
    o_dt_b = o_conv_b + E
    o_a = o_dt_b + E                           # A: real parts ·log2 e, then (COMPLEX) imaginary parts
    o_d = o_a + E * BC
    o_out_b = o_d + E
    residual = hidden + residual
    u = _rms(residual, v_ptr, eps, D)
    slot_now = tick % W
    # ring slot s holds the input of tick τ with τ ≡ s (mod W); tap j of the conv reads tick t − (W − 1) + j
    tap = ((tl.arange(0, W) - slot_now - 1) % W + W) % W
    dt_r = tl.zeros([BLOCK_B, R], tl.float32)
    b_in = tl.zeros([BLOCK_B, N], tl.float32)
    c_out = tl.zeros([BLOCK_B, N], tl.float32)
    b_im = tl.zeros([BLOCK_B, N], tl.float32)
    c_im = tl.zeros([BLOCK_B, N], tl.float32)
    tl.debug_barrier()  # the previous block's readers of xz are done
    for c in tl.range(0, E, E_CHUNK, num_stages=STAGES):
        dt_r, b_in, c_out, b_im, c_im = _walk_in(
            c, u, dt_r, b_in, c_out, b_im, c_im, m_ptr, v_ptr, conv_ptr, xz_ptr, rows, row_ok, slot_now, tap, o_in,
            o_in_b, o_conv, o_conv_b, o_xp, D, E, R, N, W, E_CHUNK, COMPLEX)
    tl.debug_barrier()  # x and z written above by other threads
    out = tl.zeros([BLOCK_B, D], tl.float32)
    for c in tl.range(0, E, E_CHUNK, num_stages=STAGES):
        out = _walk_out(c, out, dt_r, b_in, c_out, b_im, c_im, m_ptr, v_ptr, ssm_ptr, xz_ptr, rows, row_ok, o_dt,
                        o_dt_b, o_a, o_d, o_out, D, E, R, N, E_CHUNK, COMPLEX)
    out += tl.load(v_ptr + o_out_b + tl.arange(0, D))[None, :]
    return out, residual


@triton.jit
def _stage(x, m_ptr, v_ptr, conv_ptr, ssm_ptr, xz_ptr, rows, row_ok, tick, n_rows, eps, n_layers,
           D: tl.constexpr, E: tl.constexpr, R: tl.constexpr, N: tl.constexpr, W: tl.constexpr,
           E_CHUNK: tl.constexpr, BLOCK_B: tl.constexpr, STAGES: tl.constexpr, COMPLEX: tl.constexpr):
    """n_layers blocks at one width: x [BLOCK_B, D] → hidden + residual after the last (x itself for none)."""
    BC: tl.constexpr = 2 * N if COMPLEX else N
    mat_numel = 2 * E * D + E * W + (R + 2 * BC) * E + E * R + D * E
    vec_numel = D + 2 * E + E + E + E * BC + E + D
    hidden = x
    residual = tl.zeros_like(x)
    for layer in range(n_layers):
        hidden, residual = _block(hidden, residual, m_ptr + layer * mat_numel, v_ptr + layer * vec_numel,
                                  conv_ptr + layer * n_rows * E * W,
                                  ssm_ptr + layer * n_rows * E * BC, xz_ptr, rows, row_ok, tick, n_rows, eps,
                                  D, E, R, N, W, E_CHUNK, BLOCK_B, STAGES, COMPLEX)
    return hidden + residual


@triton.jit
def _up_pool(x, w_ptr, b_ptr, buf_ptr, rows, row_ok, K: tl.constexpr, OUT: tl.constexpr, OUT_CHUNK: tl.constexpr):
    """buf[row, :OUT] = x [BLOCK_B, K] · Wᵀ + b (W (OUT, K)): the p fine steps of the next coarse period."""
    offs = tl.arange(0, OUT_CHUNK)
    for o in range(0, OUT, OUT_CHUNK):
        y = _mm(x, w_ptr + o * K, K, OUT_CHUNK, K) + tl.load(b_ptr + o + offs)[None, :]
        tl.store(buf_ptr + rows[:, None] * OUT + o + offs[None, :], y, mask=row_ok[:, None])


# Runtime integers that change from launch to launch stay unspecialised: Triton would otherwise compile the kernel
# anew (tens of seconds) whenever one becomes 1 or stops being a multiple of 16.
@triton.jit(do_not_specialize=["n_rows", "t_start", "t_end", "seed", "prompt_len", "n_layers"])
def _unet_generate_kernel(
        emb_ptr, mats0_ptr, mats1_ptr, mats2_ptr, mats3_ptr, mats4_ptr, vecs0_ptr, vecs1_ptr, vecs2_ptr, vecs3_ptr,
        vecs4_ptr,
        conv0_ptr, conv1_ptr, conv2_ptr, conv3_ptr, conv4_ptr, ssm0_ptr, ssm1_ptr, ssm2_ptr, ssm3_ptr, ssm4_ptr,
        dpool0_w_ptr, dpool0_b_ptr, dpool1_w_ptr, dpool1_b_ptr, upool1_w_ptr, upool1_b_ptr, upool0_w_ptr, upool0_b_ptr,
        norm_w_ptr, head_w_ptr, head_b_ptr,
        down_buf0_ptr, down_buf1_ptr, up_buf0_ptr, up_buf1_ptr, xz_ptr, logits_ptr,
        token_ptr, loglik_ptr, first_bad_ptr, codes_ptr, codes_ld, prompt_ptr, prompt_ld, prompt_len,
        uniform_ptr, logits_out_ptr, n_rows, t_start, t_end, seed, temperature, top_p, eps, n_layers,
        D0: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr, R0: tl.constexpr, R1: tl.constexpr, R2: tl.constexpr,
        EXPAND: tl.constexpr, N: tl.constexpr, W: tl.constexpr, P0: tl.constexpr, P1: tl.constexpr,
        V: tl.constexpr, BLOCK_V: tl.constexpr, EC0: tl.constexpr, EC1: tl.constexpr, EC2: tl.constexpr,
        KC0: tl.constexpr, KC1: tl.constexpr, UC0: tl.constexpr, UC1: tl.constexpr, VC: tl.constexpr,
        GREEDY: tl.constexpr, TOP_P: tl.constexpr, NOISE_IN: tl.constexpr, LOGITS_OUT: tl.constexpr,
        BLOCK_B: tl.constexpr, STAGES: tl.constexpr, COMPLEX: tl.constexpr):
    """Positions [t_start, t_end) for rows [pid·BLOCK_B, (pid + 1)·BLOCK_B): see the module docstring. mats/vecs
    0–4 (the blocks' packs): down stage 0, down stage 1, centre, up stage 1, up stage 0; conv/ssm 0–4 their states.
    token, loglik, first_bad (n_rows,) carry over between launches; codes[row, t − t_start] (row stride codes_ld)
    get the tokens."""
    rows = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    row_ok = rows < n_rows
    offs_v = tl.arange(0, BLOCK_V)
    v_ok = offs_v < V
    offs_d0 = tl.arange(0, D0)
    offs_d1 = tl.arange(0, D1)
    token = tl.load(token_ptr + rows, mask=row_ok, other=0)
    loglik = tl.load(loglik_ptr + rows, mask=row_ok, other=0.0)
    first_bad = tl.load(first_bad_ptr + rows, mask=row_ok, other=-1)
    for t in range(t_start, t_end):
        phase0 = t % P0
        tick1 = t // P0
        phase1 = tick1 % P1
        x = tl.load(emb_ptr + token[:, None] * D0 + offs_d0[None, :], mask=row_ok[:, None], other=0.0).to(tl.float32)
        d0 = _stage(x, mats0_ptr, vecs0_ptr, conv0_ptr, ssm0_ptr, xz_ptr, rows, row_ok, t, n_rows, eps, n_layers,
                    D0, EXPAND * D0, R0, N, W, EC0, BLOCK_B, STAGES, COMPLEX)
        up0 = up_buf0_ptr + (rows[:, None] * P0 + phase0) * D0 + offs_d0[None, :]
        o0 = _stage(tl.load(up0, mask=row_ok[:, None], other=0.0) + d0, mats4_ptr, vecs4_ptr, conv4_ptr, ssm4_ptr,
                    xz_ptr, rows, row_ok, t, n_rows, eps, n_layers, D0, EXPAND * D0, R0, N, W, EC0, BLOCK_B, STAGES,
                    COMPLEX)
        tl.store(down_buf0_ptr + (rows[:, None] * P0 + phase0) * D0 + offs_d0[None, :], d0, mask=row_ok[:, None])
        if phase0 == P0 - 1:
            tl.debug_barrier()  # down_buf0 complete; up_buf0 read by every thread before it is rewritten below
            c1 = _mm_mem(down_buf0_ptr, P0 * D0, rows, row_ok, dpool0_w_ptr, P0 * D0, D1, P0 * D0, KC0, BLOCK_B) \
                + tl.load(dpool0_b_ptr + offs_d1)[None, :]
            d1 = _stage(c1, mats1_ptr, vecs1_ptr, conv1_ptr, ssm1_ptr, xz_ptr, rows, row_ok, tick1, n_rows, eps,
                        n_layers, D1, EXPAND * D1, R1, N, W, EC1, BLOCK_B, STAGES, COMPLEX)
            up1 = up_buf1_ptr + (rows[:, None] * P1 + phase1) * D1 + offs_d1[None, :]
            o1 = _stage(tl.load(up1, mask=row_ok[:, None], other=0.0) + d1, mats3_ptr, vecs3_ptr, conv3_ptr, ssm3_ptr,
                        xz_ptr, rows, row_ok, tick1, n_rows, eps, n_layers, D1, EXPAND * D1, R1, N, W, EC1, BLOCK_B,
                        STAGES, COMPLEX)
            tl.store(down_buf1_ptr + (rows[:, None] * P1 + phase1) * D1 + offs_d1[None, :], d1,
                     mask=row_ok[:, None])
            if phase1 == P1 - 1:
                tl.debug_barrier()
                c2 = _mm_mem(down_buf1_ptr, P1 * D1, rows, row_ok, dpool1_w_ptr, P1 * D1, D2, P1 * D1, KC1, BLOCK_B) \
                    + tl.load(dpool1_b_ptr + tl.arange(0, D2))[None, :]
                centre = _stage(c2, mats2_ptr, vecs2_ptr, conv2_ptr, ssm2_ptr, xz_ptr, rows, row_ok, tick1 // P1,
                                n_rows, eps, n_layers, D2, EXPAND * D2, R2, N, W, EC2, BLOCK_B, STAGES, COMPLEX)
                _up_pool(centre, upool1_w_ptr, upool1_b_ptr, up_buf1_ptr, rows, row_ok, D2, P1 * D1, UC1)
            _up_pool(o1, upool0_w_ptr, upool0_b_ptr, up_buf0_ptr, rows, row_ok, D1, P0 * D0, UC0)
            tl.debug_barrier()  # the pooled buffers are read by other threads at the next positions
        # head: logits in chunks through scratch, then the whole row for the draw
        feats = _rms(o0, norm_w_ptr, eps, D0)
        for v in range(0, BLOCK_V, VC):
            offs = v + tl.arange(0, VC)
            part = _mm(feats, head_w_ptr + v * D0, D0, VC, D0) + tl.load(head_b_ptr + offs)[None, :]
            tl.store(logits_ptr + rows[:, None] * BLOCK_V + offs[None, :], part, mask=row_ok[:, None])
        tl.debug_barrier()
        logits = tl.load(logits_ptr + rows[:, None] * BLOCK_V + offs_v[None, :], mask=row_ok[:, None], other=0.0)
        logits = tl.where(v_ok[None, :], logits, -float("inf"))                   # the rows past n_rows: zeros
        if LOGITS_OUT:
            tl.store(logits_out_ptr + (t * n_rows + rows[:, None]) * V + offs_v[None, :], logits,
                     mask=row_ok[:, None] & v_ok[None, :])
        finite = tl.sum(((logits != logits) | (tl.abs(logits) == float("inf"))) & v_ok[None, :], axis=1) == 0
        first_bad = tl.where(~finite & (first_bad < 0), t, first_bad)
        # the draw: Gumbel-max over the tempered, top-p filtered logits
        if GREEDY:
            drawn = tl.argmax(logits, axis=1)
        else:
            score = logits / temperature
            if TOP_P:
                ordered = tl.sort(score, dim=1, descending=True)
                p = tl.exp(ordered - tl.max(ordered, axis=1)[:, None])
                p = p / tl.sum(p, axis=1)[:, None]
                kept = (tl.cumsum(p, axis=1) - p) < top_p       # up to and including the crossing token
                floor = tl.min(tl.where(kept, ordered, float("inf")), axis=1)
                score = tl.where(score >= floor[:, None], score, -float("inf"))
            if NOISE_IN:
                noise = tl.load(uniform_ptr + (t * n_rows + rows[:, None]) * V + offs_v[None, :],
                                mask=row_ok[:, None] & v_ok[None, :], other=0.5)
            else:
                noise = tl.rand(seed + t, (rows[:, None] * BLOCK_V + offs_v[None, :]).to(tl.int32))
            score = tl.where(v_ok[None, :], score - tl.log(-tl.log(noise)), -float("inf"))
            drawn = tl.argmax(score, axis=1)
        if t < prompt_len:
            chosen = tl.load(prompt_ptr + rows * prompt_ld + t, mask=row_ok, other=0)
        else:
            chosen = drawn.to(tl.int64)
            top = tl.max(logits, axis=1)
            log_norm = top + tl.log(tl.sum(tl.where(v_ok[None, :], tl.exp(logits - top[:, None]), 0.0), axis=1))
            picked = tl.sum(tl.where(offs_v[None, :] == chosen[:, None], logits, 0.0), axis=1)
            loglik += (picked - log_norm).to(tl.float64)
        tl.store(codes_ptr + rows * codes_ld + (t - t_start), chosen, mask=row_ok)
        token = chosen
    tl.store(token_ptr + rows, token, mask=row_ok)
    tl.store(loglik_ptr + rows, loglik, mask=row_ok)
    tl.store(first_bad_ptr + rows, first_bad, mask=row_ok)


def unsupported(model) -> str | None:
    """Why `UNetGenerator` cannot run `model`, or None: it takes a causal AudioUNet with two pooling levels, a
    head, Mamba blocks (real or complex A) with power-of-two sizes (widths, E, dt_rank, d_state, d_conv, classes up to
    1024)."""
    from ...models.audio_unet import AudioUNet
    from ...modules import Mamba

    if not isinstance(model, AudioUNet):
        return f"{type(model).__name__} is not an AudioUNet"
    c = model.config
    if c.bidirectional or len(c.pools) != 2 or not c.n_classes or model.embedding is None:
        return "only causal U-Nets with two pooling levels, a token embedding and a head"
    mixers = [block.mixer for stage in (*model.down, model.centre, *model.up) for block in stage.blocks]
    if any(not isinstance(m, Mamba) for m in mixers):
        return "only Mamba blocks"
    sizes = [*c.widths, *c.pools, c.d_state, c.d_conv, c.expand] + [m.dt_rank for m in mixers]
    if any(s & (s - 1) for s in sizes) or c.n_classes > 1024:
        return f"sizes must be powers of two (widths {c.widths}, pools {c.pools}, d_state {c.d_state}, d_conv " \
               f"{c.d_conv}, expand {c.expand}, dt_rank {sorted({m.dt_rank for m in mixers})})"
    return None


def pack_block(block, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """One Block (norm + Mamba mixer) as the two flat packs `_block` reads. Matrices, in `dtype`, each (out, in) as
    nn.Linear holds it: in_proj (2E, D), conv (E, W), x_proj (R + 2·bc_width, E), dt_proj (E, R), out_proj (D, E).
    Vectors, fp32: the norm's weight, in_proj's bias, conv's bias, dt_proj's bias, Re A·log2 e (E, N) with
    Re A = −exp(A_log) (then Im A = A_imag (E, N) for a complex SSM), D (E,), out_proj's bias. Absent biases are
    zeros."""
    m, norm = block.mixer, block.norm
    E, D = m.in_proj.weight.shape[0] // 2, m.in_proj.weight.shape[1]

    def bias(linear, size):
        return linear.bias if linear.bias is not None else torch.zeros(size, device=linear.weight.device)

    def flat(parts, dtype):
        return torch.cat([p.detach().to(dtype).reshape(-1) for p in parts])

    A = [-torch.exp(m.A_log.float()) * LOG2E.value] + ([m.A_imag] if m.complex_ssm else [])
    matrices = [m.in_proj.weight, m.conv1d.weight[:, 0], m.x_proj.weight, m.dt_proj.weight, m.out_proj.weight]
    vectors = [norm.weight, bias(m.in_proj, 2 * E), bias(m.conv1d, E), m.dt_proj.bias, *A, m.D, bias(m.out_proj, D)]
    return flat(matrices, dtype), flat(vectors, torch.float32)


class UNetGenerator:
    """The persistent generation kernel's weights and states for one AudioUNet and n rows, started from empty
    states at position 0. `run(steps, ...)` generates the next `steps` positions; states, the last token, each row's
    log-likelihood (fp64, nats, of the drawn tokens under softmax(logits)) and its first position with non-finite
    logits (−1: none) carry over between runs. Launch shape: block_rows rows per program; num_warps and tile_elements
    default to WARPS and TILE_ELEMENTS, or to MANY_PROGRAMS where there are more programs than SMs."""

    def __init__(self, model, n: int, start_token: int, block_rows: int = 1, num_warps: int | None = None,
                 stages: int = STAGES, tile_elements: int | None = None):
        reason = unsupported(model)
        if reason:
            raise ValueError(f"UNetGenerator: {reason}")
        if model.embedding.weight.device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1":
            raise ValueError("UNetGenerator: the persistent generation kernel runs on a CUDA device (or under "
                             "TRITON_INTERPRET=1, slowly); this model is on the CPU")
        c = model.config
        device = model.embedding.weight.device
        f32 = dict(device=device, dtype=torch.float32)
        self.n, self.config, self.position = n, c, 0
        self.widths = c.widths
        # weight matrices in the model's dtype (fp32 for fp64), so a bf16 model reads half the bytes; the rest fp32
        self.dtype = torch.float32 if model.embedding.weight.dtype == torch.float64 else model.embedding.weight.dtype
        parts = [model.down[0], model.down[1], model.centre, model.up[1], model.up[0]]
        packs = [[pack_block(b, self.dtype) for b in stage.blocks] for stage in parts]
        self.mats = [torch.cat([m for m, _ in blocks]) if blocks else torch.zeros(1, **f32) for blocks in packs]
        self.vecs = [torch.cat([v for _, v in blocks]) if blocks else torch.zeros(1, **f32) for blocks in packs]
        level = [0, 1, 2, 1, 0]
        E = [c.expand * w for w in self.widths]
        self.conv = [torch.zeros(max(c.n_layers, 1), n, E[k], c.d_conv, **f32) for k in level]
        state_width = 2 * c.d_state if c.complex_ssm else c.d_state  # complex: [Re h, Im h]
        self.ssm = [torch.zeros(max(c.n_layers, 1), n, E[k], state_width, **f32) for k in level]
        self.dt_rank = [_dt_rank(model.down[0]), _dt_rank(model.down[1]), _dt_rank(model.centre)]

        def weights(linear):
            return linear.weight.detach().to(self.dtype).contiguous(), linear.bias.detach().float().contiguous()

        self.pools = [*weights(model.down_pool[0].linear), *weights(model.down_pool[1].linear),
                      *weights(model.up_pool[1].linear), *weights(model.up_pool[0].linear)]
        self.embedding = model.embedding.weight.detach().to(self.dtype).contiguous()
        self.norm = model.norm.weight.detach().float().contiguous()
        self.block_v = next_power_of_2(c.n_classes)
        head_w = torch.zeros(self.block_v, c.d_model, device=device, dtype=self.dtype)
        head_b = torch.full((self.block_v,), -float("inf"), **f32)
        head_w[:c.n_classes] = model.head.weight.detach()
        head_b[:c.n_classes] = model.head.bias.detach().float()
        self.head = [head_w, head_b]
        self.eps = float(model.norm.eps)
        P0, P1 = c.pools
        D0, D1, _ = self.widths
        self.buffers = [torch.zeros(n, P0, D0, **f32), torch.zeros(n, P1, D1, **f32),
                        torch.zeros(n, P0, D0, **f32), torch.zeros(n, P1, D1, **f32)]  # down 0, 1; up 0, 1
        self.xz = torch.zeros(n, 2 * E[2], **f32)
        self.logits = torch.zeros(n, self.block_v, **f32)
        self.token = torch.full((n,), start_token, dtype=torch.int64, device=device)
        self.loglik = torch.zeros(n, dtype=torch.float64, device=device)
        self.first_bad = torch.full((n,), -1, dtype=torch.int64, device=device)
        many = cdiv(n, block_rows) > sm_count(device)
        default_warps, default_tile = MANY_PROGRAMS if many else (WARPS, TILE_ELEMENTS)
        self.block_b, self.stages = block_rows, stages
        self.num_warps = num_warps if num_warps is not None else default_warps
        self.tile_elements = tile_elements if tile_elements is not None else default_tile

    def state_tensors(self) -> list[torch.Tensor]:
        """Every recurrent state tensor, rows first."""
        layered = [s.transpose(0, 1) for s in (*self.conv, *self.ssm)]
        return layered + self.buffers

    def uses_dot(self) -> bool:
        """Whether products of 16 or more outputs and inputs run on the tensor cores (`_mm`): 16-bit weights and 16
        or more rows per program."""
        return self.dtype.itemsize == 2 and self.block_b >= 16

    def _chunks(self) -> dict:
        """Channel, input and output chunk sizes that keep each tile within tile_elements: a broadcast product's
        (rows × outputs × inputs), or on the tensor cores the weights' (outputs × inputs) and the state update's
        (rows × channels × state width)."""
        c, bb = self.config, self.block_b
        D0, D1, D2 = self.widths
        P0, P1 = c.pools
        product_rows = 1 if self.uses_dot() else bb
        state_width = 2 * c.d_state if c.complex_ssm else c.d_state

        def chunk(total, other, rows=product_rows):
            return max(1, min(total, floor_power_of_2(self.tile_elements // (rows * other))))

        def e_chunk(width):
            E = c.expand * width
            return min(chunk(E, width), chunk(E, state_width, bb))

        return dict(EC0=e_chunk(D0), EC1=e_chunk(D1), EC2=e_chunk(D2), KC0=chunk(P0 * D0, D1), KC1=chunk(P1 * D1, D2),
                    UC0=chunk(P0 * D0, D1), UC1=chunk(P1 * D1, D2), VC=chunk(self.block_v, D0))

    def run(self, steps: int, codes: torch.Tensor, prompt: torch.Tensor | None = None, temperature: float = 1.0,
            top_p: float = 1.0, seed: int = 0, uniform: torch.Tensor | None = None,
            logits_out: torch.Tensor | None = None) -> None:
        """Generate positions [position, position + steps) into codes (n, ≥ steps) int64 (a view with unit column
        stride is fine). prompt (n, T) int64: positions < T take its tokens. uniform (≥ position + steps, n, V)
        fp32: the draws' noise instead of Philox with `seed` (mod 2^30: seed + position stays an int32). logits_out
        (≥ position + steps, n, V) fp32: every position's logits (tests)."""
        c = self.config
        if codes.stride(1) != 1 or codes.shape[0] != self.n or codes.shape[1] < steps:
            raise ValueError(f"codes must be ({self.n}, ≥ {steps}) with unit column stride, got {tuple(codes.shape)}")
        prompt_t = prompt.contiguous() if prompt is not None else self.token
        dummy = self.logits
        _unet_generate_kernel[(cdiv(self.n, self.block_b),)](
            self.embedding, *self.mats, *self.vecs, *self.conv, *self.ssm, *self.pools, self.norm, *self.head,
            *self.buffers, self.xz, self.logits, self.token, self.loglik, self.first_bad, codes,
            codes.stride(0), prompt_t, prompt_t.stride(0) if prompt is not None else 0,
            prompt.shape[1] if prompt is not None else 0, uniform if uniform is not None else dummy,
            logits_out if logits_out is not None else dummy, self.n, self.position, self.position + steps,
            int(seed) % 2**30,
            float(temperature) if temperature > 0 else 1.0, float(top_p), self.eps, c.n_layers,
            D0=self.widths[0], D1=self.widths[1], D2=self.widths[2], R0=self.dt_rank[0], R1=self.dt_rank[1],
            R2=self.dt_rank[2], EXPAND=c.expand, N=c.d_state, W=c.d_conv, P0=c.pools[0], P1=c.pools[1],
            V=c.n_classes, BLOCK_V=self.block_v, **self._chunks(), GREEDY=temperature == 0, TOP_P=top_p < 1.0,
            NOISE_IN=uniform is not None, LOGITS_OUT=logits_out is not None, BLOCK_B=self.block_b,
            STAGES=self.stages, COMPLEX=c.complex_ssm, num_warps=self.num_warps)
        self.position += steps


def _dt_rank(stage) -> int:
    return stage.blocks[0].mixer.dt_rank if len(stage.blocks) else 1
