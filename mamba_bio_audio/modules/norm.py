import torch
from torch import nn

from ..kernels import add_rmsnorm


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x²) + eps) · weight, computed in fp32, returned in x's dtype. x: (..., dim)."""

    def __init__(self, dim: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return add_rmsnorm(x, None, self.weight, self.eps, residual_in_fp32=False)[0]
