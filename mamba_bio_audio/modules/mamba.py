"""The Mamba mixer (Gu & Dao 2023, Fig. 3): in-projection, causal depthwise conv, selective SSM, gate, out-projection.

Shapes: b = batch, L = sequence length, d = d_model, E = expand·d_model (inner width), N = d_state,
R = dt_rank, W = d_conv.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..kernels import causal_conv1d, causal_conv1d_update, selective_scan, selective_state_update


class Mamba(nn.Module):
    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank: int | str = "auto",
                 dt_min: float = 1e-3, dt_max: float = 1e-1, dt_init_floor: float = 1e-4, conv_bias: bool = True,
                 bias: bool = False, complex_ssm: bool = False, layer_idx: int | None = None,
                 in_proj: nn.Linear | None = None, out_proj: nn.Linear | None = None):
        """`in_proj`/`out_proj`: existing projections to share (a bidirectional layer ties them across directions)."""
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.complex_ssm = complex_ssm
        self.layer_idx = layer_idx
        E, N, R = self.d_inner, d_state, self.dt_rank
        self.in_proj = in_proj if in_proj is not None else nn.Linear(d_model, 2 * E, bias=bias)
        # Depthwise causal conv; nn.Conv1d holds the weights (E, 1, W) in the usual layout, causal_conv1d runs them.
        self.conv1d = nn.Conv1d(E, E, kernel_size=d_conv, groups=E, padding=d_conv - 1, bias=conv_bias)
        self.bc_width = 2 * N if complex_ssm else N  # complex B and C come as (real, imag) halves
        self.x_proj = nn.Linear(E, R + 2 * self.bc_width, bias=False)
        self.dt_proj = nn.Linear(R, E, bias=True)
        self.out_proj = out_proj if out_proj is not None else nn.Linear(E, d_model, bias=bias)

        # Δ: dt_proj's weight ~ U(±R^-1/2); its bias is softplus⁻¹ of a log-uniform dt in [dt_min, dt_max].
        nn.init.uniform_(self.dt_proj.weight, -R ** -0.5, R ** -0.5)
        log_dt = torch.rand(E) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        dt = torch.exp(log_dt).clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.dt_proj.bias._no_reinit = True

        # A = −exp(A_log) (+ i·A_imag): S4D-real −(1..N), or S4D-Lin −1/2 + iπn. Kept in fp32, no weight decay.
        if complex_ssm:
            self.A_log = nn.Parameter(torch.full((E, N), math.log(0.5)))
            self.A_imag = nn.Parameter(math.pi * torch.arange(N, dtype=torch.float32).repeat(E, 1))
            self.A_imag._no_weight_decay = True
        else:
            self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(E, 1))
        self.D = nn.Parameter(torch.ones(E))
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        self._step_params_cache = None  # (key of the weights, (A, D, Δ bias)) for `step` under no_grad

    def ssm_A(self) -> torch.Tensor:
        """A: (E, N) fp32, or complex64 in complex mode (fp64 / complex128 in an fp64 model)."""
        A = -torch.exp(_fp32_or_wider(self.A_log))
        return torch.complex(A, _fp32_or_wider(self.A_imag)) if self.complex_ssm else A

    def _split_x_proj(self, x_dbl: torch.Tensor):
        """x_dbl: (..., R + 2·bc_width) -> dt (..., R), B and C (..., N) (complex in complex mode)."""
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.bc_width, self.bc_width], dim=-1)
        if self.complex_ssm:
            N = self.d_state
            B = torch.complex(_fp32_or_wider(B[..., :N]), _fp32_or_wider(B[..., N:]))
            C = torch.complex(_fp32_or_wider(C[..., :N]), _fp32_or_wider(C[..., N:]))
        return dt, B, C

    def forward(self, hidden: torch.Tensor, cache=None) -> torch.Tensor:
        """hidden: (b, L, d) -> (b, L, d). With an inference cache the layer continues from the cached states and
        leaves its states after the last token there: a chunk of several tokens runs the parallel path (the conv
        over the cached last inputs + the chunk, the scan from the cached state), so a long sequence can be fed in
        chunks with the same result as in one pass; a single token goes through `step` (the first one too: from the
        zero states a fresh cache holds, the step is the parallel path's result, and every position of a generation
        then runs the same kernels, which lets one CUDA graph serve them all)."""
        batch, length, _ = hidden.shape
        if cache is not None and length == 1:
            conv_state, ssm_state = cache.states[self.layer_idx]
            return self.step(hidden[:, 0], conv_state, ssm_state)[:, None]

        x, z = self.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)       # (b, E, L) each
        initial_state = None
        if cache is not None:
            conv_state, initial_state = cache.states[self.layer_idx]
            x = torch.cat([conv_state[..., 1:].to(x.dtype), x], dim=-1)     # (b, E, W − 1 + L): earlier inputs first
            conv_state.copy_(x[..., -self.d_conv:])                         # last W inputs (b, E, W)
        x = causal_conv1d(x, self.conv1d.weight[:, 0], self.conv1d.bias, activation="silu")[..., -length:]
        dt, B, C = self._split_x_proj(self.x_proj(x.transpose(1, 2)))     # (b, L, R), (b, L, N) x2
        dt = (dt @ self.dt_proj.weight.t()).transpose(1, 2)                 # (b, E, L); bias added in the scan
        y = selective_scan(x, dt, self.ssm_A(), B.transpose(1, 2), C.transpose(1, 2), _fp32_or_wider(self.D), z,
                           delta_bias=_fp32_or_wider(self.dt_proj.bias), delta_softplus=True,
                           initial_state=initial_state, return_last_state=cache is not None)
        if cache is not None:
            y, last_state = y
            initial_state.copy_(last_state)
        return self.out_proj(y.transpose(1, 2))                             # (b, L, d)

    def step(self, hidden: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor) -> torch.Tensor:
        """One token: hidden (b, d) -> (b, d); conv_state (b, E, W) and ssm_state (b, E, N) are updated in place."""
        x, z = self.in_proj(hidden).chunk(2, dim=-1)                         # (b, E) each
        x = causal_conv1d_update(x, conv_state, self.conv1d.weight[:, 0], self.conv1d.bias, activation="silu")
        dt, B, C = self._split_x_proj(self.x_proj(x))                      # (b, R), (b, N) x2
        dt = dt @ self.dt_proj.weight.t()                                   # (b, E)
        A, D, dt_bias = self._step_params()
        y = selective_state_update(ssm_state, x, dt, A, B, C, D, z, dt_bias=dt_bias, dt_softplus=True)
        return self.out_proj(y)

    def _step_params(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A (E, N), D (E,) and the Δ bias (E,) as the scan takes them (fp32 or wider). Under no_grad they are kept
        until a weight changes (in place or replaced: the key holds each one's storage, version and dtype), so
        generation does not run −exp(A_log) and the casts again at every token: in the SC09 U-Net that was 2 of
        the ~10 kernels of each block step (BENCHMARKS.md, 2026-11-23)."""
        weights = (self.A_log, self.D, self.dt_proj.bias) + ((self.A_imag,) if self.complex_ssm else ())
        key = None if torch.is_grad_enabled() else tuple((w.data_ptr(), w._version, w.dtype) for w in weights)
        if key is None or self._step_params_cache is None or self._step_params_cache[0] != key:
            params = (self.ssm_A(), _fp32_or_wider(self.D), _fp32_or_wider(self.dt_proj.bias))
            if key is None:
                return params
            self._step_params_cache = (key, params)
        return self._step_params_cache[1]

    def allocate_inference_cache(self, batch_size: int, dtype: torch.dtype | None = None, device=None):
        """(conv_state (b, E, W) in the conv's dtype, ssm_state (b, E, N) fp32 or complex64 (float64/complex128 for
        a float64 model)), zeroed."""
        weight = self.conv1d.weight
        conv_state = torch.zeros(batch_size, self.d_inner, self.d_conv, dtype=dtype or weight.dtype,
                                 device=device or weight.device)
        wide = weight.dtype == torch.float64
        ssm_dtype = (torch.complex128 if wide else torch.complex64) if self.complex_ssm else \
            (torch.float64 if wide else torch.float32)
        ssm_state = torch.zeros(batch_size, self.d_inner, self.d_state, device=device or weight.device,
                                dtype=ssm_dtype)
        return conv_state, ssm_state


def _fp32_or_wider(param: torch.Tensor) -> torch.Tensor:
    """SSM parameters (A, D, Δ bias) enter the scan in fp32 whatever the compute dtype, in fp64 in an fp64 model."""
    return param if param.dtype == torch.float64 else param.float()


class BiMamba(nn.Module):
    """Bidirectional Mamba: one Mamba on the sequence, one on its reverse, combined by add or multiply.

    With `weight_tie` the two directions share in_proj and out_proj (Caduceus-style); conv, x/dt projections
    and the SSM parameters stay separate. Not causal: no recurrent decoding."""

    def __init__(self, d_model: int, strategy: str = "add", weight_tie: bool = True, layer_idx: int | None = None,
                 **mamba_kwargs):
        super().__init__()
        if strategy not in ("add", "mul"):
            raise ValueError(f"BiMamba strategy must be 'add' or 'mul', got {strategy!r}")
        self.strategy = strategy
        self.forward_mixer = Mamba(d_model, layer_idx=layer_idx, **mamba_kwargs)
        shared = dict(in_proj=self.forward_mixer.in_proj, out_proj=self.forward_mixer.out_proj) if weight_tie else {}
        self.reverse_mixer = Mamba(d_model, layer_idx=layer_idx, **mamba_kwargs, **shared)

    def forward(self, hidden: torch.Tensor, cache=None) -> torch.Tensor:
        """hidden: (b, L, d) -> (b, L, d)."""
        if cache is not None:
            raise ValueError("a bidirectional Mamba sees the whole sequence: it has no recurrent decoding")
        out = self.forward_mixer(hidden)
        out_rev = self.reverse_mixer(hidden.flip(1)).flip(1)
        return out + out_rev if self.strategy == "add" else out * out_rev
