"""Residual add + RMSNorm in Triton, forward and backward: one pass over each row reads x (and the residual),
writes the fp32 residual and the normalised output; the backward recomputes 1/rms from the saved residual."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..host import cdiv, next_power_of_2


@triton.jit
def _fwd_kernel(x_ptr, res_ptr, w_ptr, y_ptr, res_out_ptr, dim, eps, HAS_RES: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < dim
    s = tl.load(x_ptr + row * dim + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        s += tl.load(res_ptr + row * dim + cols, mask=mask, other=0.0).to(tl.float32)
    s_out = s.to(res_out_ptr.dtype.element_ty)
    tl.store(res_out_ptr + row * dim + cols, s_out, mask=mask)
    s = s_out.to(tl.float32)  # normalise the residual as stored (rounded to its dtype), as the PyTorch path does
    rstd = 1.0 / tl.sqrt(tl.sum(s * s, axis=0) / dim + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * dim + cols, (s * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_kernel(res_out_ptr, w_ptr, dy_ptr, dres_out_ptr, ds_ptr, dw_ptr, n_rows, dim, eps, rows_per_program,
                HAS_DRES: tl.constexpr, BLOCK: tl.constexpr):
    cols = tl.arange(0, BLOCK)
    mask = cols < dim
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK], tl.float32)
    first = tl.program_id(0).to(tl.int64) * rows_per_program
    for i in range(rows_per_program):
        row = first + i
        if row < n_rows:
            s = tl.load(res_out_ptr + row * dim + cols, mask=mask, other=0.0).to(tl.float32)
            rstd = 1.0 / tl.sqrt(tl.sum(s * s, axis=0) / dim + eps)
            xhat = s * rstd
            dy = tl.load(dy_ptr + row * dim + cols, mask=mask, other=0.0).to(tl.float32)
            dw += dy * xhat
            dxhat = dy * w
            ds = rstd * (dxhat - xhat * tl.sum(dxhat * xhat, axis=0) / dim)
            if HAS_DRES:
                ds += tl.load(dres_out_ptr + row * dim + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(ds_ptr + row * dim + cols, ds, mask=mask)
    tl.atomic_add(dw_ptr + cols, dw, mask=mask)


class _AddRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, eps: float, residual_in_fp32: bool):
        shape, dim = x.shape, x.shape[-1]
        x2 = x.reshape(-1, dim).contiguous()
        res2 = residual.reshape(-1, dim).contiguous() if residual is not None else None
        res_dtype = residual.dtype if residual is not None else x.dtype
        if residual_in_fp32 and res_dtype != torch.float64:
            res_dtype = torch.float32
        y = torch.empty_like(x2)
        res_out = torch.empty(x2.shape, device=x.device, dtype=res_dtype)
        _fwd_kernel[(x2.shape[0],)](x2, res2 if res2 is not None else x2, weight, y, res_out, dim, eps,
                                    HAS_RES=res2 is not None, BLOCK=next_power_of_2(dim))
        ctx.save_for_backward(res_out, weight)
        ctx.meta = (eps, x.dtype, residual is not None and residual.dtype)
        return y.reshape(shape), res_out.reshape(shape)

    @staticmethod
    def backward(ctx, dy, dres_out):
        res_out, weight = ctx.saved_tensors
        eps, x_dtype, res_dtype = ctx.meta
        dim = res_out.shape[-1]
        n_rows = res_out.shape[0]
        ds = torch.empty(res_out.shape, device=res_out.device, dtype=torch.float32)
        dw = torch.zeros(dim, device=res_out.device, dtype=torch.float32)
        rows_per_program = max(1, cdiv(n_rows, 1024))
        _bwd_kernel[(cdiv(n_rows, rows_per_program),)](
            res_out, weight, dy.reshape(-1, dim).contiguous(),
            dres_out.reshape(-1, dim).contiguous() if dres_out is not None else ds, ds, dw, n_rows, dim, eps,
            rows_per_program, HAS_DRES=dres_out is not None, BLOCK=next_power_of_2(dim))
        ds = ds.reshape(dy.shape)
        return ds.to(x_dtype), ds.to(res_dtype) if res_dtype else None, dw.to(weight.dtype), None, None


def add_rmsnorm_fused(x, residual, weight, eps: float = 1e-5, residual_in_fp32: bool = True):
    """Same contract as `add_rmsnorm_naive`."""
    return _AddRMSNorm.apply(x, residual, weight, eps, residual_in_fp32)
