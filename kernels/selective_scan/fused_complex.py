"""Fused selective scan in Triton for complex A (complex B, C and state), every complex tensor as separate real and
imaginary planes.

One program owns (batch row, block of BLOCK_D channels of one B/C group) and walks L in tiles of BLOCK_T tokens.
A tile loads u, Δ, z as [BLOCK_D, BLOCK_T] and B, C as [N, BLOCK_T] once for all the block's channels, forms
a = exp(Δ·A) and x = Δ·u·B as [BLOCK_D, N, BLOCK_T] (real and imaginary parts), solves h_t = a_t h_{t−1} + x_t with
`tl.associative_scan` and carries h in registers to the next tile. Only the state at each tile start is written
(for the backward). The backward walks the tiles from last to first, recomputes the tile's states h_{t−1} from the
saved start state (loads shifted by one token) and runs the adjoint as a reverse scan, carrying it between tiles.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_tiles import LOG2E, _block_d, _load_bc, _load_tile, _program_block, _store_output


@triton.jit
def _combine_complex(ar1, ai1, xr1, xi1, ar2, ai2, xr2, xi2):
    """(a1, x1) then (a2, x2) for complex a, x held as (real, imaginary) pairs: (a2·a1, a2·x1 + x2)."""
    return (ar2 * ar1 - ai2 * ai1, ar2 * ai1 + ai2 * ar1,
            ar2 * xr1 - ai2 * xi1 + xr2, ar2 * xi1 + ai2 * xr1 + xi2)


@triton.jit
def _complex_decay(dt, Ar2, Ai):
    """a = exp(Δ·A) for complex A = Ar + i·Ai (Ar2 = Ar·log2 e): (real, imaginary), each (BLOCK_D, N, BLOCK_T)."""
    mag = tl.exp2(dt[:, None, :] * Ar2[:, :, None])
    angle = dt[:, None, :] * Ai[:, :, None]
    return mag * tl.cos(angle), mag * tl.sin(angle)


@triton.jit
def _fwd_kernel_complex(u_ptr, dt_ptr, z_ptr, Ar_ptr, Ai_ptr, Br_ptr, Bi_ptr, Cr_ptr, Ci_ptr, D_ptr, bias_ptr,
                        h0r_ptr, h0i_ptr, out_ptr, hlr_ptr, hli_ptr, hsr_ptr, hsi_ptr,
                        dim, L, n_state, n_groups, dim_per_group, n_tiles,
                        B_CONST: tl.constexpr, C_CONST: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                        HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr,
                        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr):
    """`_fwd_kernel` for complex A, B, C and state, every complex tensor passed as separate real and imaginary
    planes; y = 2·Re(Σ_n C_n·h_n)."""
    offs_d, offs_n, mask_d, mask_n, mask_dn, rows, row_bc, dn_offs = _program_block(
        dim, n_state, n_groups, dim_per_group, BLOCK_D, BLOCK_N)
    offs_t = tl.arange(0, BLOCK_T)
    Ar2 = tl.load(Ar_ptr + dn_offs, mask=mask_dn, other=0.0) * LOG2E
    Ai = tl.load(Ai_ptr + dn_offs, mask=mask_dn, other=0.0)
    bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0) if HAS_BIAS else tl.zeros([BLOCK_D], tl.float32)
    Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0) if HAS_D else tl.zeros([BLOCK_D], tl.float32)
    state_offs = rows[:, None] * n_state + offs_n[None, :]
    if HAS_H0:
        hr = tl.load(h0r_ptr + state_offs, mask=mask_dn, other=0.0)
        hi = tl.load(h0i_ptr + state_offs, mask=mask_dn, other=0.0)
    else:
        hr = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
        hi = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    last = (offs_t == BLOCK_T - 1)[None, None, :]
    for k in range(n_tiles):
        t0 = k * BLOCK_T
        t1 = t0 + BLOCK_T
        start_offs = (rows[:, None] * n_tiles + k) * n_state + offs_n[None, :]
        tl.store(hsr_ptr + start_offs, hr, mask=mask_dn)
        tl.store(hsi_ptr + start_offs, hi, mask=mask_dn)
        t = t0 + offs_t
        u, dt = _load_tile(u_ptr, dt_ptr, bias, rows, t, mask_d, L, HAS_BIAS, SOFTPLUS, t0, t1)
        Br = _load_bc(Br_ptr, row_bc, n_state, t, offs_n, mask_n, L, B_CONST, dn_offs, mask_dn, t0, t1)
        Bi = _load_bc(Bi_ptr, row_bc, n_state, t, offs_n, mask_n, L, B_CONST, dn_offs, mask_dn, t0, t1)
        Cr = _load_bc(Cr_ptr, row_bc, n_state, t, offs_n, mask_n, L, C_CONST, dn_offs, mask_dn, t0, t1)
        Ci = _load_bc(Ci_ptr, row_bc, n_state, t, offs_n, mask_n, L, C_CONST, dn_offs, mask_dn, t0, t1)
        ar, ai = _complex_decay(dt, Ar2, Ai)
        dtu = (dt * u)[:, None, :]
        acr, aci, xcr, xci = tl.associative_scan((ar, ai, dtu * Br, dtu * Bi), axis=2, combine_fn=_combine_complex)
        hsr = acr * hr[:, :, None] - aci * hi[:, :, None] + xcr
        hsi = acr * hi[:, :, None] + aci * hr[:, :, None] + xci
        y = 2.0 * tl.sum(Cr * hsr - Ci * hsi, axis=1)
        hr = tl.sum(tl.where(last, hsr, 0.0), axis=2)
        hi = tl.sum(tl.where(last, hsi, 0.0), axis=2)
        out = y + Dv[:, None] * u
        io = rows[:, None] * L + t[None, :]
        mask_io = mask_d[:, None] & (t < L)[None, :]
        _store_output(out_ptr, out_ptr, z_ptr, io, out, mask_io, HAS_Z, False)
    tl.store(hlr_ptr + state_offs, hr, mask=mask_dn)
    tl.store(hli_ptr + state_offs, hi, mask=mask_dn)


@triton.jit
def _bwd_kernel_complex(u_ptr, dt_ptr, z_ptr, Ar_ptr, Ai_ptr, Br_ptr, Bi_ptr, Cr_ptr, Ci_ptr, D_ptr, bias_ptr,
                        hsr_ptr, hsi_ptr, dout_ptr, dhr_ptr, dhi_ptr,
                        du_ptr, ddt_ptr, dz_ptr, dAr_ptr, dAi_ptr, dBr_ptr, dBi_ptr, dCr_ptr, dCi_ptr, dD_ptr,
                        dbias_ptr, dh0r_ptr, dh0i_ptr,
                        dim, L, n_state, n_groups, dim_per_group, n_tiles,
                        B_CONST: tl.constexpr, C_CONST: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                        HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_DHLAST: tl.constexpr,
                        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr):
    """`_bwd_kernel` for complex A, B, C, in PyTorch's conjugate convention: with g = 2·∂y (real),
    μ_t = conj(C_t)·g_t + conj(a_{t+1})·μ_{t+1}; ∂(Δ·A) = μ·conj(a_t·h_{t−1}); ∂B = μ·Δu; ∂C = conj(h)·g;
    ∂(Δu) = Re Σ μ·conj(B); ∂Δ += Re Σ ∂(Δ·A)·conj(A); ∂h0 = conj(a_0)·μ_0."""
    offs_d, offs_n, mask_d, mask_n, mask_dn, rows, row_bc, dn_offs = _program_block(
        dim, n_state, n_groups, dim_per_group, BLOCK_D, BLOCK_N)
    offs_t = tl.arange(0, BLOCK_T)
    Ar = tl.load(Ar_ptr + dn_offs, mask=mask_dn, other=0.0)
    Ai = tl.load(Ai_ptr + dn_offs, mask=mask_dn, other=0.0)
    Ar2 = Ar * LOG2E
    bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0) if HAS_BIAS else tl.zeros([BLOCK_D], tl.float32)
    Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0) if HAS_D else tl.zeros([BLOCK_D], tl.float32)
    state_offs = rows[:, None] * n_state + offs_n[None, :]
    if HAS_DHLAST:
        cr = tl.load(dhr_ptr + state_offs, mask=mask_dn, other=0.0)
        ci = tl.load(dhi_ptr + state_offs, mask=mask_dn, other=0.0)
    else:
        cr = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
        ci = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    dAr_acc = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    dAi_acc = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    dBr_const = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    dBi_const = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    dCr_const = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    dCi_const = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    dD_acc = tl.zeros([BLOCK_D], tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], tl.float32)
    first = (offs_t == 0)[None, None, :]
    for j in range(n_tiles):
        k = n_tiles - 1 - j
        t0 = k * BLOCK_T
        t1 = t0 + BLOCK_T
        t = t0 + offs_t
        start_offs = (rows[:, None] * n_tiles + k) * n_state + offs_n[None, :]
        h0r = tl.load(hsr_ptr + start_offs, mask=mask_dn, other=0.0)
        h0i = tl.load(hsi_ptr + start_offs, mask=mask_dn, other=0.0)
        u, dt = _load_tile(u_ptr, dt_ptr, bias, rows, t, mask_d, L, HAS_BIAS, SOFTPLUS, t0, t1)
        u_p, dt_p = _load_tile(u_ptr, dt_ptr, bias, rows, t - 1, mask_d, L, HAS_BIAS, SOFTPLUS, t0, t1)
        _, dt_n = _load_tile(u_ptr, dt_ptr, bias, rows, t + 1, mask_d, L, HAS_BIAS, SOFTPLUS, t0, t1)
        Br = _load_bc(Br_ptr, row_bc, n_state, t, offs_n, mask_n, L, B_CONST, dn_offs, mask_dn, t0, t1)
        Bi = _load_bc(Bi_ptr, row_bc, n_state, t, offs_n, mask_n, L, B_CONST, dn_offs, mask_dn, t0, t1)
        Bpr = _load_bc(Br_ptr, row_bc, n_state, t - 1, offs_n, mask_n, L, B_CONST, dn_offs, mask_dn, t0, t1)
        Bpi = _load_bc(Bi_ptr, row_bc, n_state, t - 1, offs_n, mask_n, L, B_CONST, dn_offs, mask_dn, t0, t1)
        Cr = _load_bc(Cr_ptr, row_bc, n_state, t, offs_n, mask_n, L, C_CONST, dn_offs, mask_dn, t0, t1)
        Ci = _load_bc(Ci_ptr, row_bc, n_state, t, offs_n, mask_n, L, C_CONST, dn_offs, mask_dn, t0, t1)
        ar, ai = _complex_decay(dt, Ar2, Ai)
        apr, api = _complex_decay(dt_p, Ar2, Ai)
        anr, ani = _complex_decay(dt_n, Ar2, Ai)
        dtu_p = (dt_p * u_p)[:, None, :]
        pcr, pci, xpr, xpi = tl.associative_scan((apr, api, dtu_p * Bpr, dtu_p * Bpi), axis=2,
                                                 combine_fn=_combine_complex)
        hpr = pcr * h0r[:, :, None] - pci * h0i[:, :, None] + xpr   # h_{t−1}
        hpi = pcr * h0i[:, :, None] + pci * h0r[:, :, None] + xpi
        dtu = dt * u
        decr = ar * hpr - ai * hpi                                 # a_t·h_{t−1}
        deci = ar * hpi + ai * hpr
        hr = decr + dtu[:, None, :] * Br                           # h_t
        hi = deci + dtu[:, None, :] * Bi
        io = rows[:, None] * L + t[None, :]
        mask_io = mask_d[:, None] & (t < L)[None, :]
        dout = tl.load(dout_ptr + io, mask=mask_io, other=0.0).to(tl.float32)
        y = 2.0 * tl.sum(Cr * hr - Ci * hi, axis=1)
        if HAS_Z:
            z = tl.load(z_ptr + io, mask=mask_io, other=0.0).to(tl.float32)
            sig = tl.sigmoid(z)
            tl.store(dz_ptr + io, dout * (y + Dv[:, None] * u) * sig * (1.0 + z * (1.0 - sig)), mask=mask_io)
            go = dout * z * sig
        else:
            go = dout
        g2 = (2.0 * go)[:, None, :]
        ncr, nci, mr, mi = tl.associative_scan((anr, -ani, Cr * g2, -Ci * g2), axis=2,
                                               combine_fn=_combine_complex, reverse=True)
        mr = mr + ncr * cr[:, :, None] - nci * ci[:, :, None]      # μ_t (carry entering from the next tile)
        mi = mi + ncr * ci[:, :, None] + nci * cr[:, :, None]
        cr = tl.sum(tl.where(first, ar * mr + ai * mi, 0.0), axis=2)  # conj(a_{t0})·μ_{t0}
        ci = tl.sum(tl.where(first, ar * mi - ai * mr, 0.0), axis=2)
        dPr = mr * decr + mi * deci                                # μ·conj(a_t·h_{t−1})
        dPi = mi * decr - mr * deci
        dAr_acc += tl.sum(dPr * dt[:, None, :], axis=2)
        dAi_acc += tl.sum(dPi * dt[:, None, :], axis=2)
        d_dtu = tl.sum(mr * Br + mi * Bi, axis=1)
        ddt = d_dtu * u + tl.sum(dPr * Ar[:, :, None] + dPi * Ai[:, :, None], axis=1)
        tl.store(du_ptr + io, d_dtu * dt + Dv[:, None] * go, mask=mask_io)
        if HAS_D:
            dD_acc += tl.sum(tl.where(mask_io, go * u, 0.0), axis=1)
        if SOFTPLUS:
            raw = tl.load(dt_ptr + io, mask=mask_io, other=0.0).to(tl.float32) + bias[:, None]
            ddt = ddt * tl.sigmoid(raw)
        ddt = tl.where(mask_io, ddt, 0.0)
        tl.store(ddt_ptr + io, ddt, mask=mask_io)
        if HAS_BIAS:
            dbias_acc += tl.sum(ddt, axis=1)
        gBr = mr * dtu[:, None, :]
        gBi = mi * dtu[:, None, :]
        gCr = hr * g2
        gCi = -hi * g2
        bc_offs = (row_bc * n_state + offs_n[:, None]) * L + t[None, :]
        bc_mask = mask_n[:, None] & (t < L)[None, :]
        if B_CONST:
            dBr_const += tl.sum(gBr, axis=2)
            dBi_const += tl.sum(gBi, axis=2)
        else:
            tl.atomic_add(dBr_ptr + bc_offs, tl.sum(gBr, axis=0), mask=bc_mask)
            tl.atomic_add(dBi_ptr + bc_offs, tl.sum(gBi, axis=0), mask=bc_mask)
        if C_CONST:
            dCr_const += tl.sum(gCr, axis=2)
            dCi_const += tl.sum(gCi, axis=2)
        else:
            tl.atomic_add(dCr_ptr + bc_offs, tl.sum(gCr, axis=0), mask=bc_mask)
            tl.atomic_add(dCi_ptr + bc_offs, tl.sum(gCi, axis=0), mask=bc_mask)
    tl.store(dh0r_ptr + state_offs, cr, mask=mask_dn)
    tl.store(dh0i_ptr + state_offs, ci, mask=mask_dn)
    tl.store(dAr_ptr + state_offs, dAr_acc, mask=mask_dn)
    tl.store(dAi_ptr + state_offs, dAi_acc, mask=mask_dn)
    if B_CONST:
        tl.store(dBr_ptr + state_offs, dBr_const, mask=mask_dn)
        tl.store(dBi_ptr + state_offs, dBi_const, mask=mask_dn)
    if C_CONST:
        tl.store(dCr_ptr + state_offs, dCr_const, mask=mask_dn)
        tl.store(dCi_ptr + state_offs, dCi_const, mask=mask_dn)
    if HAS_D:
        tl.store(dD_ptr + rows, dD_acc, mask=mask_d)
    if HAS_BIAS:
        tl.store(dbias_ptr + rows, dbias_acc, mask=mask_d)


# Tile shapes: tokens per tile (shared by both kernels: the backward starts from the forward's tile-start states),
# and per kernel (elements of one [BLOCK_D, N, BLOCK_T] tile, num_warps).
TOKENS_PER_TILE = 32
TILE = {"fwd": (1024, 4), "bwd": (1024, 4)}


def _tile_tokens(L: int) -> int:
    return max(8, min(TOKENS_PER_TILE, triton.next_power_of_2(L)))


def _launch_config(kind, dim, n_state, block_t, groups):
    """BLOCK_D, BLOCK_N, num_warps for one kernel."""
    elements, warps = TILE[kind]
    block_n = triton.next_power_of_2(n_state)
    return _block_d(dim // groups, max(1, elements // (block_n * block_t))), block_n, warps


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
        (Ar, Ai), (Br, Bi), (Cr, Ci) = _planes(A), _planes(B), _planes(C)
        D32 = D.float().contiguous() if D is not None else None
        bias32 = delta_bias.float().contiguous() if delta_bias is not None else None
        h0r, h0i = _planes(initial_state) if initial_state is not None else (None, None)
        block_t = _tile_tokens(L)
        n_tiles = triton.cdiv(L, block_t)
        block_d, block_n, warps = _launch_config("fwd", dim, n_state, block_t, groups)
        f32 = dict(device=u.device, dtype=torch.float32)
        out = torch.empty_like(u)
        hlr, hli = torch.empty(batch, dim, n_state, **f32), torch.empty(batch, dim, n_state, **f32)
        hsr, hsi = (torch.empty(batch, dim, n_tiles, n_state, **f32) for _ in range(2))
        dummy = hlr
        _fwd_kernel_complex[(batch, triton.cdiv(dim, block_d))](
            u, delta, z if z is not None else u, Ar, Ai, Br, Bi, Cr, Ci, D32 if D32 is not None else dummy,
            bias32 if bias32 is not None else dummy, h0r if h0r is not None else dummy,
            h0i if h0i is not None else dummy, out, hlr, hli, hsr, hsi, dim, L, n_state, groups, dim // groups,
            n_tiles, B_CONST=B.dim() == 2, C_CONST=C.dim() == 2, HAS_D=D32 is not None, HAS_Z=z is not None,
            HAS_BIAS=bias32 is not None, SOFTPLUS=softplus, HAS_H0=h0r is not None,
            BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_T=block_t, num_warps=warps)
        ctx.save_for_backward(u, delta, z, Ar, Ai, Br, Bi, Cr, Ci, D32, bias32, hsr, hsi)
        ctx.meta = (softplus, groups, block_t, n_tiles, B.dtype, C.dtype, D is not None and D.dtype,
                    delta_bias is not None and delta_bias.dtype, initial_state is not None and initial_state.dtype)
        return out, torch.complex(hlr, hli)

    @staticmethod
    def backward(ctx, dout, dh_last):
        u, delta, z, Ar, Ai, Br, Bi, Cr, Ci, D32, bias32, hsr, hsi = ctx.saved_tensors
        softplus, groups, block_t, n_tiles, B_dtype, C_dtype, D_dtype, bias_dtype, h0_dtype = ctx.meta
        batch, dim, L = u.shape
        n_state = Ar.shape[1]
        f32 = dict(device=u.device, dtype=torch.float32)
        du, ddelta = torch.empty(u.shape, **f32), torch.empty(u.shape, **f32)
        dz = torch.empty(u.shape, **f32) if z is not None else None
        rows_state = (batch, dim, n_state)
        dAr, dAi, dh0r, dh0i = (torch.empty(rows_state, **f32) for _ in range(4))
        bc_grad = lambda X: torch.zeros(X.shape, **f32) if X.dim() > 2 else torch.empty(rows_state, **f32)  # noqa: E731
        dBr, dBi, dCr, dCi = bc_grad(Br), bc_grad(Bi), bc_grad(Cr), bc_grad(Ci)
        dD = torch.empty(batch, dim, **f32) if D32 is not None else None
        dbias = torch.empty(batch, dim, **f32) if bias32 is not None else None
        dhr, dhi = _planes(dh_last) if dh_last is not None else (None, None)
        dummy = dh0r
        block_d, block_n, warps = _launch_config("bwd", dim, n_state, block_t, groups)
        _bwd_kernel_complex[(batch, triton.cdiv(dim, block_d))](
            u, delta, z if z is not None else u, Ar, Ai, Br, Bi, Cr, Ci, D32 if D32 is not None else dummy,
            bias32 if bias32 is not None else dummy, hsr, hsi, dout.contiguous(),
            dhr if dhr is not None else dummy, dhi if dhi is not None else dummy,
            du, ddelta, dz if dz is not None else du, dAr, dAi, dBr, dBi, dCr, dCi,
            dD if dD is not None else dummy, dbias if dbias is not None else dummy, dh0r, dh0i,
            dim, L, n_state, groups, dim // groups, n_tiles,
            B_CONST=Br.dim() == 2, C_CONST=Cr.dim() == 2, HAS_D=D32 is not None, HAS_Z=z is not None,
            HAS_BIAS=bias32 is not None, SOFTPLUS=softplus, HAS_DHLAST=dhr is not None,
            BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_T=block_t, num_warps=warps)

        def gathered(re, im, dtype, const):
            g = torch.complex(re.sum(0), im.sum(0)) if const else torch.complex(re, im)
            return g if dtype.is_complex else g.real.to(dtype)

        return (du.to(u.dtype), ddelta.to(delta.dtype), torch.complex(dAr.sum(0), dAi.sum(0)),
                gathered(dBr, dBi, B_dtype, Br.dim() == 2), gathered(dCr, dCi, C_dtype, Cr.dim() == 2),
                dD.sum(0).to(D_dtype) if dD is not None else None, dz.to(z.dtype) if dz is not None else None,
                dbias.sum(0).to(bias_dtype) if dbias is not None else None,
                torch.complex(dh0r, dh0i).to(h0_dtype) if h0_dtype else None, None, None)
