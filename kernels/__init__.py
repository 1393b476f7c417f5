"""Selective-scan kernels with one public function per op and a backend switch.

    selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   initial_state=None, return_last_state=False)
    selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                           state_batch_indices=None)
    causal_conv1d(x, weight, bias=None, activation=None), causal_conv1d_update(x, conv_state, weight, ...)
    add_rmsnorm(x, residual, weight, eps=1e-5, residual_in_fp32=True)
    mamba_block_step(hidden, residual, norm_weight, eps, in_proj_weight, ..., conv_state, ssm_state)
    sample_step(logits, uniform, forced, forced_tokens, token, codes, loglik, nonfinite, temperature=1.0, top_p=1.0)

The backend is chosen per call: the environment variable ``MBA_SCAN_BACKEND`` (``naive`` | ``torch`` | ``numba`` |
``triton``) forces one. By default CUDA tensors use the fastest backend available for them, and CPU tensors use
``numba`` (the recurrence compiled on the CPU) when numba is installed, else ``torch`` (chunked PyTorch).
"""
from __future__ import annotations

import os

import torch

from .causal_conv1d import causal_conv1d_naive, causal_conv1d_update_naive
from .mamba_block_step import mamba_block_step_naive
from .rmsnorm import add_rmsnorm_naive
from .sample_step import sample_step_naive
from .selective_scan import selective_scan_chunked, selective_scan_naive
from .selective_scan.numba_cpu import numba_available, selective_scan_numba
from .selective_scan.triton_support import triton_available
from .selective_state_update import selective_state_update_naive

BACKEND_ENV = "MBA_SCAN_BACKEND"
KNOWN_BACKENDS = ("naive", "torch", "numba", "triton")
# Every backend implements every op; where a backend has no kernel of its own for an op it uses the PyTorch one.
_PYTORCH_OPS = dict(scan=selective_scan_chunked, state_update=selective_state_update_naive, conv=causal_conv1d_naive,
                    conv_update=causal_conv1d_update_naive, norm=add_rmsnorm_naive, block_step=mamba_block_step_naive,
                    sample_step=sample_step_naive)
_BACKENDS = {"naive": {**_PYTORCH_OPS, "scan": selective_scan_naive}, "torch": _PYTORCH_OPS}
if triton_available():  # fused scan, decoding step, conv, add + RMSNorm and the whole block's step
    from .causal_conv1d.fused import causal_conv1d_fused, causal_conv1d_update_fused
    from .mamba_block_step.fused import mamba_block_step_fused
    from .rmsnorm.fused import add_rmsnorm_fused
    from .sample_step.fused import sample_step_fused
    from .selective_scan.fused import selective_scan_fused
    from .selective_state_update.fused import selective_state_update_fused

    _BACKENDS["triton"] = dict(scan=selective_scan_fused, state_update=selective_state_update_fused,
                               conv=causal_conv1d_fused, conv_update=causal_conv1d_update_fused, norm=add_rmsnorm_fused,
                               block_step=mamba_block_step_fused, sample_step=sample_step_fused)
if numba_available():  # the scan is compiled; the other ops are PyTorch
    _BACKENDS["numba"] = {**_PYTORCH_OPS, "scan": selective_scan_numba}
# one dispatch table per op: backend name -> implementation
_SCAN, _STATE_UPDATE, _CONV, _CONV_UPDATE, _NORM, _BLOCK_STEP, _SAMPLE_STEP = (
    {name: ops[op] for name, ops in _BACKENDS.items()}
    for op in ("scan", "state_update", "conv", "conv_update", "norm", "block_step", "sample_step"))


def available_backends() -> list[str]:
    """Backends implemented in this installation."""
    return list(_SCAN)


def active_backend(device: torch.device | str = "cpu") -> str:
    """The backend a call on tensors of `device` uses: ``MBA_SCAN_BACKEND`` if set, else the default."""
    forced = os.environ.get(BACKEND_ENV, "").strip().lower()
    if forced:
        if forced not in KNOWN_BACKENDS:
            raise ValueError(f"{BACKEND_ENV}={forced!r} is not a scan backend; "
                             f"choose one of {', '.join(KNOWN_BACKENDS)}")
        if forced not in _SCAN:
            raise RuntimeError(f"{BACKEND_ENV}={forced!r}: that backend is not available in this installation "
                               f"(available: {', '.join(available_backends())})")
        return forced
    if torch.device(device).type == "cuda":
        return "triton" if "triton" in _SCAN else "torch"
    return "numba" if "numba" in _SCAN else "torch"


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   initial_state=None, return_last_state=False):
    """Selective scan (Mamba's S6 layer), differentiable in every tensor input.

    Shapes: u, delta, z: (batch, dim, L); A: (dim, N) real or complex; B, C: (batch, N, L), grouped
    (batch, G, N, L) with channel d in group d // (dim/G), or constant (dim, N); D, delta_bias: (dim,);
    initial_state: (batch, dim, N).
    Math: Δ = delta + delta_bias (softplus if `delta_softplus`); h_t = exp(Δ_t·A) ⊙ h_{t−1} + Δ_t·B_t·u_t, h_0 =
    initial_state or 0; y_t = Σ_n h_t,n·C_t,n (2·Re(...) for complex A); out = (y + D·u)·silu(z).
    The state and all accumulation are fp32 (fp64 for fp64 inputs) whatever the input dtype.
    Returns out (batch, dim, L) in u's dtype, and with `return_last_state` also h_L (batch, dim, N) in fp32
    (complex64 for complex A); gradients flow back through it too.
    """
    return _SCAN[active_backend(u.device)](u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                           delta_softplus=delta_softplus, initial_state=initial_state,
                                           return_last_state=return_last_state)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                           state_batch_indices=None):
    """One token of the selective scan: updates `state` (batch, dim, N) in place, returns out (batch, dim).

    x, dt, z: (batch, dim); A: (dim, N); B, C: (batch, N) or (batch, G, N); D, dt_bias: (dim,).
    state_batch_indices (batch,) int64: rows of a larger cache state (cache_size, dim, N) to use and update.
    """
    return _STATE_UPDATE[active_backend(x.device)](state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias,
                                                   dt_softplus=dt_softplus, state_batch_indices=state_batch_indices)


def causal_conv1d(x, weight, bias=None, activation=None):
    """Causal depthwise conv1d: x (batch, channels, L), weight (channels, W), bias (channels,) -> (batch, channels, L),
    then silu if activation == "silu"."""
    return _CONV[active_backend(x.device)](x, weight, bias, activation)


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None):
    """One conv step: x (batch, channels) enters conv_state (batch, channels, W) in place; returns (batch, channels)."""
    return _CONV_UPDATE[active_backend(x.device)](x, conv_state, weight, bias, activation)


def add_rmsnorm(x, residual, weight, eps=1e-5, residual_in_fp32=True):
    """residual_out = x + residual (fp32 if asked); y = RMSNorm(residual_out)·weight in x's dtype.
    x, residual: (..., dim); weight: (dim,). Returns (y, residual_out)."""
    return _NORM[active_backend(x.device)](x, residual, weight, eps, residual_in_fp32)


def mamba_block_step(hidden, residual, norm_weight, eps, in_proj_weight, conv_weight, conv_bias, x_proj_weight,
                     dt_proj_weight, dt_proj_bias, A_log, D, out_proj_weight, conv_state, ssm_state, in_proj_bias=None,
                     out_proj_bias=None, residual_in_fp32=True, A_imag=None):
    """One token through a pre-norm residual Mamba block: residual' = hidden + residual, then the mixer's
    recurrent step on RMSNorm(residual'), with conv_state (b, E, W) and ssm_state (b, E, N) fp32 advanced in place
    (complex64 for a complex SSM, whose A_imag (E, N) is then given). hidden (b, d); residual (b, d) or None. Returns
    (mixer output (b, d) in hidden's dtype, residual' (b, d)).
    The math and the weights' shapes: `mamba_block_step_naive`. On the GPU two Triton kernels (and above d_model
    128 one product for out_proj) do it for fp32/bf16/fp16 weights (`mamba_block_step.fused`); `Block` steps
    through it."""
    return _BLOCK_STEP[active_backend(hidden.device)](
        hidden, residual, norm_weight, eps, in_proj_weight, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
        dt_proj_bias, A_log, D, out_proj_weight, conv_state, ssm_state, in_proj_bias, out_proj_bias, residual_in_fp32,
        A_imag)


def sample_step(logits, uniform, forced, forced_tokens, token, codes, loglik, nonfinite, temperature=1.0, top_p=1.0):
    """One position of sampling: token = forced ? forced_tokens : a Gumbel-max draw from softmax(logits/temperature)
    (top-p filtered) with the given uniform noise; written to `token` and `codes`, its log-probability under
    softmax(logits) added to `loglik` (fp64) unless forced, and whether the row's logits hold a NaN or ±inf written to
    `nonfinite`. logits, uniform (n, V); forced () bool; forced_tokens, token, codes (n,) int64; nonfinite (n,) bool.
    No host sync: a CUDA graph can hold it. One Triton kernel on the GPU (without top-p)."""
    return _SAMPLE_STEP[active_backend(logits.device)](logits, uniform, forced, forced_tokens, token, codes, loglik,
                                                       nonfinite, temperature, top_p)


__all__ = ["add_rmsnorm", "mamba_block_step", "mamba_block_step_naive", "sample_step", "sample_step_naive",
           "causal_conv1d", "causal_conv1d_update", "selective_scan", "selective_state_update", "active_backend",
           "available_backends", "selective_scan_naive", "selective_scan_chunked", "selective_scan_numba",
           "selective_state_update_naive"]
